-- The human review queue: one row per pending proposal, decided at most once.
CREATE TABLE IF NOT EXISTS review_queue (
    proposal_id  uuid        PRIMARY KEY,
    kind         text        NOT NULL,
    object_type  text        NOT NULL,
    record_id    text        NOT NULL,
    confidence   double precision NOT NULL,
    proposal     jsonb       NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'approved_with_changes', 'rejected',
                                   'expired', 'superseded')),
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    decision_id  uuid,
    decided_by   text,
    decided_at   timestamptz,
    comment      text
);
CREATE INDEX IF NOT EXISTS review_queue_pending ON review_queue (status, enqueued_at);
