-- The sandbox CRM: the executor's embedded default target, holding contacts and companies.
-- In production the executor writes to a real CRM through its adapter instead.
CREATE TABLE IF NOT EXISTS sandbox_crm_records (
    object_type text        NOT NULL,
    record_id   text        NOT NULL,
    properties  jsonb       NOT NULL DEFAULT '{}',
    version     bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_type, record_id)
);
