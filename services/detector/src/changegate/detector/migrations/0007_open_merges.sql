-- Open merge proposals by the records they name: a cluster that grows (or absorbs another) gets a
-- new merge proposal that covers all its members, and it retires every open one it overlaps.
CREATE TABLE IF NOT EXISTS detector_open_merges (
    proposal_id uuid   PRIMARY KEY,
    object_type text   NOT NULL,
    members     text[] NOT NULL,
    proposal    jsonb  NOT NULL
);
CREATE INDEX IF NOT EXISTS detector_open_merges_members ON detector_open_merges USING gin (members);
