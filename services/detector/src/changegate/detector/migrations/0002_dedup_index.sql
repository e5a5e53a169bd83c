-- The duplicate finder's blocking index: each record under a few keys (see matching/blocking.py).
CREATE TABLE IF NOT EXISTS detector_blocking (
    key         text NOT NULL,
    object_type text NOT NULL,
    record_id   text NOT NULL,
    PRIMARY KEY (key, record_id)
);
CREATE INDEX IF NOT EXISTS detector_blocking_record ON detector_blocking (object_type, record_id);

-- The newest open proposal per record and field: a newer one supersedes it.
CREATE TABLE IF NOT EXISTS detector_open_proposals (
    object_type text  NOT NULL,
    record_id   text  NOT NULL,
    field       text  NOT NULL,
    proposal_id uuid  NOT NULL,
    proposal    jsonb NOT NULL,
    PRIMARY KEY (object_type, record_id, field)
);

-- Round-robin owner assignment: the next position per rotation.
CREATE TABLE IF NOT EXISTS detector_round_robin (
    name text   PRIMARY KEY,
    next bigint NOT NULL DEFAULT 0
);
