-- The sandbox CRM, now the executor's own (core migration 0002 created the records table in
-- databases that predate this file; IF NOT EXISTS keeps both paths). Merges redirect a loser to its
-- survivor; owners exist to be validated like a real CRM's.
CREATE TABLE IF NOT EXISTS sandbox_crm_records (
    object_type text        NOT NULL,
    record_id   text        NOT NULL,
    properties  jsonb       NOT NULL DEFAULT '{}',
    version     bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_type, record_id)
);
ALTER TABLE sandbox_crm_records ADD COLUMN IF NOT EXISTS merged_into text;

CREATE TABLE IF NOT EXISTS sandbox_crm_owners (
    owner_id text    PRIMARY KEY,
    email    text,
    archived boolean NOT NULL DEFAULT false
);
