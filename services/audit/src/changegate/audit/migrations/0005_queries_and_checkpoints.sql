-- Keyset pages by filter: each filter column with seq, so "WHERE x = $1 AND seq > $2 ORDER BY seq"
-- reads one index range (record history, approver, field, outcome, rule, source system).
CREATE INDEX IF NOT EXISTS audit_entries_record_id ON audit_entries (record_id, seq);
CREATE INDEX IF NOT EXISTS audit_entries_approver ON audit_entries (approver, seq);
CREATE INDEX IF NOT EXISTS audit_entries_field ON audit_entries (field, seq);
CREATE INDEX IF NOT EXISTS audit_entries_mode ON audit_entries (mode, seq);
CREATE INDEX IF NOT EXISTS audit_entries_rule ON audit_entries (rule_id, seq);
CREATE INDEX IF NOT EXISTS audit_entries_source ON audit_entries (source_system, seq);
CREATE INDEX IF NOT EXISTS audit_entries_proposal ON audit_entries (proposal_id);
CREATE INDEX IF NOT EXISTS audit_entries_at ON audit_entries ((coalesce(executed_at, decided_at)));

-- Signed chain heads (Ed25519, the audit service's key), also published on audit.checkpoints: a
-- chain rewritten and recomputed by whoever owns the database no longer matches them.
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq         bigint      PRIMARY KEY,
    hash        text        NOT NULL,
    signed_at   timestamptz NOT NULL,
    checkpoint  text        NOT NULL  -- the signed checkpoint as JSON (what the signature covers, and it)
);
CREATE OR REPLACE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
