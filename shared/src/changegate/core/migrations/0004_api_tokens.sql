-- API tokens (`changegate tokens create`): only a SHA-256 of each token's secret is kept.
CREATE TABLE IF NOT EXISTS changegate_api_tokens (
    id           text        PRIMARY KEY,
    name         text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('viewer', 'reviewer', 'admin')),
    queues       text[],
    kinds        text[],
    secret_hash  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
