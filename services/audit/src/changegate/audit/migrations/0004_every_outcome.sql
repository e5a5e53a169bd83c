-- Every outcome goes in the chain, not only executed changes: rejected, expired and superseded
-- decisions (no execution), and executions that ended in conflict, failure or no-op.
ALTER TABLE audit_entries DROP CONSTRAINT IF EXISTS audit_entries_mode_check;
ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_mode_check CHECK (mode IN (
    'auto_applied', 'approved', 'approved_with_changes',
    'rejected', 'expired', 'superseded', 'conflict', 'failed', 'noop'));
ALTER TABLE audit_entries ALTER COLUMN execution_id DROP NOT NULL;
ALTER TABLE audit_entries ALTER COLUMN executed_at DROP NOT NULL;
-- Rows written before keep hash version 1 (json.dumps form) and verify as they were written; new
-- rows say 2 (RFC 8785, docs/audit.md). Adding a column with a constant default rewrites nothing.
ALTER TABLE audit_entries ADD COLUMN IF NOT EXISTS hash_version smallint NOT NULL DEFAULT 1
    CHECK (hash_version IN (1, 2));
ALTER TABLE audit_entries ADD COLUMN IF NOT EXISTS kind text;
ALTER TABLE audit_entries ADD COLUMN IF NOT EXISTS decider text
    CHECK (decider IS NULL OR decider IN ('policy', 'human', 'system'));
ALTER TABLE audit_entries ADD COLUMN IF NOT EXISTS reason text;
ALTER TABLE audit_entries ADD COLUMN IF NOT EXISTS reverts_seq bigint;
-- A decision's rows (no execution) are written once, as an execution's are by (execution_id, field).
CREATE UNIQUE INDEX IF NOT EXISTS audit_entries_decision_rows
    ON audit_entries (decision_id, field) WHERE execution_id IS NULL;
