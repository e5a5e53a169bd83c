-- Tables every service shares: the idempotent-consumer record and the transactional outbox.

-- One row per (consumer, event) whose effects are committed; written in the same transaction as
-- those effects, so a redelivered event is recognised and its effects are not applied twice.
CREATE TABLE IF NOT EXISTS changegate_processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Messages to publish, written in the same transaction as the state that caused them; a relay
-- publishes them in id order and deletes them once the broker has acknowledged them.
CREATE TABLE IF NOT EXISTS changegate_outbox (
    id         bigserial   PRIMARY KEY,
    service    text        NOT NULL,
    topic      text        NOT NULL,
    key        bytea,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS changegate_outbox_service_id ON changegate_outbox (service, id);
