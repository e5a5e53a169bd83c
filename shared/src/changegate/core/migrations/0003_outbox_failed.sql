-- Outbox messages the broker refused for good (e.g. too large): kept with the error for an
-- operator, instead of blocking every message behind them.
CREATE TABLE IF NOT EXISTS changegate_outbox_failed (
    id         bigint      PRIMARY KEY,
    service    text        NOT NULL,
    topic      text        NOT NULL,
    key        bytea,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now(),
    error      text        NOT NULL
);
