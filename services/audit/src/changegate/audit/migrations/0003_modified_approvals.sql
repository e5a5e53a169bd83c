-- An approval with changes is its own mode, with the value first proposed beside the one applied.
ALTER TABLE audit_entries DROP CONSTRAINT IF EXISTS audit_entries_mode_check;
ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_mode_check
    CHECK (mode IN ('auto_applied', 'approved', 'approved_with_changes'));
ALTER TABLE audit_entries ADD COLUMN IF NOT EXISTS proposed_value text;
