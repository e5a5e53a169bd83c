-- Pairs a reviewer said are different entities (a rejected merge names every pair of its
-- records): they never join one cluster again, however the cluster grows (a < b).
CREATE TABLE IF NOT EXISTS detector_distinct_pairs (
    object_type text        NOT NULL,
    a           text        NOT NULL,
    b           text        NOT NULL,
    proposal_id uuid        NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_type, a, b),
    CHECK (a < b)
);
CREATE INDEX IF NOT EXISTS detector_distinct_pairs_b ON detector_distinct_pairs (object_type, b);
