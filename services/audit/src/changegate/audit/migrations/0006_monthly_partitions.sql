-- Retention: the log is range-partitioned by month on appended_at, the time the database appended the
-- row (clock_timestamp() while the chain's lock is held, so it never goes back as seq goes up and each
-- month holds one contiguous run of seq). Not the outcome's own time: a late execution of last month
-- is appended after this month's rows, and a month must be a stretch of the chain to be archived and
-- verified alone. appended_at is storage, outside the hash; no hashed value changes here.
--
-- Unique keys of a partitioned table must hold its partition key, so each unique key below is
-- enforced within a month; across months seq stays unique by construction (one appender at a time,
-- under the chain's lock, seq = head + 1) and verify reports any gap, repeat or broken link.
ALTER TABLE audit_entries RENAME TO audit_entries_before_partitioning;
CREATE TABLE audit_entries (
    LIKE audit_entries_before_partitioning INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    appended_at timestamptz NOT NULL DEFAULT clock_timestamp()
) PARTITION BY RANGE (appended_at);

-- One month's partition, append-only like its parent (row triggers are cloned from the parent; a
-- TRUNCATE of the partition itself is not, hence its own trigger). Months are UTC (so is the
-- arithmetic: the functions run with timezone UTC whatever the session's).
CREATE OR REPLACE FUNCTION audit_add_partition(within timestamptz) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, public SET timezone = 'UTC' AS $$
DECLARE
    starts timestamptz := date_trunc('month', within, 'UTC');
    name text := 'audit_entries_' || to_char(starts AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF to_regclass(format('public.%I', name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE public.%I PARTITION OF public.audit_entries FOR VALUES FROM (%L) TO (%L)',
        name, starts, starts + interval '1 month');
    EXECUTE format(
        'CREATE TRIGGER %I BEFORE TRUNCATE ON public.%I'
        ' FOR EACH STATEMENT EXECUTE FUNCTION public.audit_refuse_change()',
        name || '_no_truncate', name);
    RETURN true;
END $$;

-- The current month and the next ``ahead`` ones; what the audit service calls on start and every hour
-- (as its own role: hence SECURITY DEFINER, and only that role may call it). Returns how many it made.
CREATE OR REPLACE FUNCTION audit_add_partitions(ahead integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public SET timezone = 'UTC' AS $$
DECLARE
    made integer := 0;
BEGIN
    IF ahead IS NULL OR ahead < 0 OR ahead > 24 THEN
        RAISE EXCEPTION 'ahead must be 0..24 months, not %', ahead USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('audit_add_partitions'));  -- replicas at once: one makes each
    FOR i IN 0..ahead LOOP
        IF public.audit_add_partition(date_trunc('month', now()) + make_interval(months => i)) THEN
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END $$;
REVOKE ALL ON FUNCTION audit_add_partition(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_add_partitions(integer) FROM PUBLIC;

-- Rows logged before kept no append time: each takes the latest outcome time up to it (never later
-- than now), so months stay contiguous in seq. Every column is copied as it is.
CREATE TEMPORARY TABLE audit_moving ON COMMIT DROP AS
    SELECT o.seq, least(max(coalesce(o.executed_at, o.decided_at)) OVER (ORDER BY o.seq), now()) AS at
    FROM audit_entries_before_partitioning o;
SELECT audit_add_partition(m) FROM (SELECT DISTINCT date_trunc('month', at, 'UTC') AS m FROM audit_moving) months;
SELECT audit_add_partitions(3);
INSERT INTO audit_entries
    SELECT o.*, m.at FROM audit_entries_before_partitioning o JOIN audit_moving m USING (seq) ORDER BY o.seq;
DO $$
BEGIN  -- as many rows, and each old row among the new ones: the same rows
    IF (SELECT count(*) FROM audit_entries_before_partitioning) <> (SELECT count(*) FROM audit_entries)
       OR EXISTS (SELECT to_jsonb(o) FROM audit_entries_before_partitioning o
                  EXCEPT ALL SELECT to_jsonb(n) - 'appended_at' FROM audit_entries n) THEN
        RAISE EXCEPTION 'audit_entries: rows differ after partitioning; nothing changed';
    END IF;
END $$;
DROP TABLE audit_entries_before_partitioning;

-- The keys and indexes of before (same names), each unique one with the partition key.
ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_pkey PRIMARY KEY (seq, appended_at);
ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_hash_key UNIQUE (hash, appended_at);
ALTER TABLE audit_entries ADD CONSTRAINT audit_entries_execution_id_field_key
    UNIQUE (execution_id, field, appended_at);
CREATE UNIQUE INDEX audit_entries_decision_rows
    ON audit_entries (decision_id, field, appended_at) WHERE execution_id IS NULL;
CREATE INDEX audit_entries_record ON audit_entries (object_type, record_id, seq);
CREATE INDEX audit_entries_record_id ON audit_entries (record_id, seq);
CREATE INDEX audit_entries_approver ON audit_entries (approver, seq);
CREATE INDEX audit_entries_field ON audit_entries (field, seq);
CREATE INDEX audit_entries_mode ON audit_entries (mode, seq);
CREATE INDEX audit_entries_rule ON audit_entries (rule_id, seq);
CREATE INDEX audit_entries_source ON audit_entries (source_system, seq);
CREATE INDEX audit_entries_proposal ON audit_entries (proposal_id);
CREATE INDEX audit_entries_at ON audit_entries ((coalesce(executed_at, decided_at)));

CREATE TRIGGER audit_entries_append_only
    BEFORE UPDATE OR DELETE ON audit_entries FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON audit_entries FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- Archived months (`changegate audit archive`): exported, verified, then detached into the schema
-- audit_archive, which no service role can read. What verify starts from once the oldest months are
-- gone: the last archived row's seq and hash, which a signed checkpoint names.
CREATE SCHEMA IF NOT EXISTS audit_archive;
CREATE TABLE IF NOT EXISTS audit_archives (
    month        date        PRIMARY KEY,  -- its first day (UTC)
    rows         bigint      NOT NULL,
    first_seq    bigint,
    last_seq     bigint,
    prev_hash    text,                     -- the hash the first row links to (the month before's last)
    last_hash    text,
    file_sha256  text        NOT NULL,     -- of the JSONL export
    manifest     text        NOT NULL,     -- the manifest as written beside the export
    detached_as  text        NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE TRIGGER audit_archives_append_only
    BEFORE UPDATE OR DELETE ON audit_archives FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_archives_no_truncate
    BEFORE TRUNCATE ON audit_archives FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
