-- When each property's value was true at the CRM (ms since the epoch: a webhook's event time, an
-- imported snapshot's last-modified time): a value only replaces one observed earlier, so an import
-- never puts back a value a webhook has changed since, and a late webhook never one newer than it.
ALTER TABLE detector_records ADD COLUMN IF NOT EXISTS property_times jsonb NOT NULL DEFAULT '{}';
-- The newest event time folded into the record, and when it went away (deleted or merged): an
-- older snapshot or event does not bring it back.
ALTER TABLE detector_records ADD COLUMN IF NOT EXISTS seen_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE detector_records ADD COLUMN IF NOT EXISTS gone_ms bigint;

-- `changegate crm import`: how far the import of each object type from each CRM has come. A page's
-- records and the cursor after it are written in one transaction, so a resumed import starts at
-- the first page not loaded, and loads no record twice.
CREATE TABLE IF NOT EXISTS detector_imports (
    source      text        NOT NULL,  -- the CRM read from (e.g. hubspot@https://api.hubapi.com)
    object_type text        NOT NULL,
    after       text,                  -- the CRM's cursor of the next page; NULL: from the start
    loaded      bigint      NOT NULL DEFAULT 0,
    pages       bigint      NOT NULL DEFAULT 0,
    total       bigint,                -- what the CRM said it holds when the import began
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (source, object_type)
);
