-- Duplicate clusters: records the finder linked, under an id that stays as records join.
CREATE TABLE IF NOT EXISTS detector_clusters (
    object_type text NOT NULL,
    record_id   text NOT NULL,
    cluster_id  uuid NOT NULL,
    PRIMARY KEY (object_type, record_id)
);
CREATE INDEX IF NOT EXISTS detector_clusters_cluster ON detector_clusters (cluster_id);
