-- How each proposal was routed, once: a redelivered proposal is not routed again, even after the
-- policy changed in between (its output is already in the outbox).
CREATE TABLE IF NOT EXISTS policy_routes (
    proposal_id    uuid        PRIMARY KEY,
    action         text        NOT NULL CHECK (action IN ('auto_apply', 'review', 'reject')),
    rule_id        text        NOT NULL,
    policy_version text        NOT NULL,
    policy_hash    text        NOT NULL,
    explanation    text        NOT NULL,
    routed_at      timestamptz NOT NULL DEFAULT now()
);
