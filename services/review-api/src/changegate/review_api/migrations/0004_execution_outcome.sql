-- What became of an approved item in the CRM: applied, conflict (re-proposed), failed, noop.
ALTER TABLE review_queue
    ADD COLUMN IF NOT EXISTS execution_id     uuid,
    ADD COLUMN IF NOT EXISTS execution_status text
        CHECK (execution_status IN ('applied', 'conflict', 'failed', 'noop')),
    ADD COLUMN IF NOT EXISTS executed_at      timestamptz,
    ADD COLUMN IF NOT EXISTS execution_error  text;
