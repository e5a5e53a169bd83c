-- Exactly once against a CRM that shares no transaction with us: the intent is committed before
-- the CRM is called, what the CRM held is recorded before it is written, the outcome after. A
-- decision whose row is 'done' is never executed again; one left at 'intent' is resolved by reading
-- the CRM, never by writing blindly.
CREATE TABLE IF NOT EXISTS executor_ledger (
    decision_id  uuid        PRIMARY KEY,
    execution_id uuid        NOT NULL,
    target       text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('intent', 'done')),
    attempts     integer     NOT NULL DEFAULT 1,
    observed     jsonb,      -- the record's values read just before the write
    status       text        CHECK (status IN ('applied', 'conflict', 'failed', 'noop')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
