-- The queue is read highest priority first, then oldest: an index in that order, so a page of the
-- queue does not sort every pending row.
ALTER TABLE review_queue ADD COLUMN IF NOT EXISTS priority_rank smallint
    GENERATED ALWAYS AS (CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END) STORED;
CREATE INDEX IF NOT EXISTS review_queue_by_priority
    ON review_queue (status, priority_rank, enqueued_at, proposal_id);
