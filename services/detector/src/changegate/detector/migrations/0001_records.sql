-- What the detector knows of each CRM record, built from crm.events (never from Faust tables:
-- their recovery is inexact on the embedded broker). Updated in the same transaction as the
-- processed-event claim and the proposals it emits.
CREATE TABLE IF NOT EXISTS detector_records (
    object_type text        NOT NULL,
    record_id   text        NOT NULL,
    properties  jsonb       NOT NULL DEFAULT '{}',
    deleted     boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_type, record_id)
);
