-- Every policy version the policy service loaded, recorded before it routes anything with it.
-- Only the policy role may insert (and nobody but the owner may change a row); the executor and
-- audit read it to refuse a policy decision that names a version the policy service never loaded.
CREATE TABLE IF NOT EXISTS changegate_policy_versions (
    policy_hash text        PRIMARY KEY CHECK (policy_hash ~ '^[0-9a-f]{64}$'),
    version     text        NOT NULL,
    source      text        NOT NULL,
    content     text        NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now()
);
