-- Every decision, as the audit service received it (append-only).
CREATE TABLE IF NOT EXISTS audit_decisions (
    decision_id  uuid        PRIMARY KEY,
    proposal_id  uuid        NOT NULL,
    outcome      text        NOT NULL,
    decided_by   text        NOT NULL,
    decided_at   timestamptz NOT NULL,
    decision     jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per executed field change, hash-chained: each row's hash covers its content and the
-- previous row's hash, so an altered or missing row breaks the chain (`changegate audit verify`).
CREATE TABLE IF NOT EXISTS audit_entries (
    seq             bigint      PRIMARY KEY,
    object_type     text        NOT NULL,
    record_id       text        NOT NULL,
    field           text        NOT NULL,
    previous_value  jsonb,
    new_value       jsonb,
    source_system   text        NOT NULL,
    source_event_id text        NOT NULL,
    detector        text        NOT NULL,
    confidence      double precision NOT NULL,
    mode            text        NOT NULL CHECK (mode IN ('auto_applied', 'approved')),
    approver        text        NOT NULL,
    policy_version  text,
    policy_hash     text,
    rule_id         text,
    proposal_id     uuid        NOT NULL,
    decision_id     uuid        NOT NULL,
    execution_id    uuid        NOT NULL,
    proposed_at     timestamptz NOT NULL,
    decided_at      timestamptz NOT NULL,
    executed_at     timestamptz NOT NULL,
    prev_hash       text        NOT NULL,
    hash            text        NOT NULL UNIQUE,
    UNIQUE (execution_id, field)
);
CREATE INDEX IF NOT EXISTS audit_entries_record ON audit_entries (object_type, record_id, seq);

-- The database itself refuses to change history.
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE TRIGGER audit_entries_append_only
    BEFORE UPDATE OR DELETE ON audit_entries FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON audit_entries FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_decisions_append_only
    BEFORE UPDATE OR DELETE ON audit_decisions FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_decisions_no_truncate
    BEFORE TRUNCATE ON audit_decisions FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
