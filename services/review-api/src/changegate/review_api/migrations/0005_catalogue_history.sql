-- Every proposal review-api hears of, whatever its route: those sent to review (pending, then
-- decided here) and those decided elsewhere (auto-applied or rejected by policy, superseded by the
-- detector), so any proposal can be read. Each row has a version (the ETag of the API), the
-- approvals given so far (four-eyes), and what its decision and execution held.
ALTER TABLE review_queue DROP CONSTRAINT IF EXISTS review_queue_status_check;
ALTER TABLE review_queue ADD CONSTRAINT review_queue_status_check
    CHECK (status IN ('pending', 'approved', 'approved_with_changes', 'rejected', 'expired',
                      'superseded', 'auto_approved'));
-- A proposal that was never sent to a review queue has none.
ALTER TABLE review_queue ALTER COLUMN queue DROP NOT NULL, ALTER COLUMN queue DROP DEFAULT;
ALTER TABLE review_queue
    ADD COLUMN IF NOT EXISTS version            integer  NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS required_approvals smallint NOT NULL DEFAULT 1
        CHECK (required_approvals BETWEEN 1 AND 5),
    -- [{identity, at, comment, changes (null: as proposed), digest}] in the order given
    ADD COLUMN IF NOT EXISTS approvals          jsonb    NOT NULL DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS decider            jsonb,
    ADD COLUMN IF NOT EXISTS decision_explanation text,
    ADD COLUMN IF NOT EXISTS final_changes      jsonb,
    ADD COLUMN IF NOT EXISTS execution_writes   jsonb,
    ADD COLUMN IF NOT EXISTS merged_into        text,
    ADD COLUMN IF NOT EXISTS source_system      text
        GENERATED ALWAYS AS (proposal -> 'source' ->> 'system') STORED,
    ADD COLUMN IF NOT EXISTS rule_id            text
        GENERATED ALWAYS AS (coalesce(routed_by ->> 'rule_id', decider ->> 'rule_id')) STORED,
    ADD COLUMN IF NOT EXISTS route              text GENERATED ALWAYS AS (
        CASE WHEN routed_by IS NOT NULL THEN 'review'
             WHEN decider ->> 'kind' = 'policy' AND status = 'auto_approved' THEN 'auto_apply'
             WHEN decider ->> 'kind' = 'policy' AND status = 'rejected' THEN 'reject'
        END) STORED;
CREATE INDEX IF NOT EXISTS review_queue_by_kind
    ON review_queue (status, kind, priority_rank, enqueued_at, proposal_id);
CREATE INDEX IF NOT EXISTS review_queue_by_queue
    ON review_queue (status, queue, priority_rank, enqueued_at, proposal_id);
CREATE INDEX IF NOT EXISTS review_queue_by_record ON review_queue (object_type, record_id);
CREATE INDEX IF NOT EXISTS review_queue_by_decision ON review_queue (decision_id);

-- What happened to each item, who did it and when; also the change feed of the SSE stream (seq is
-- the event id). Written by the triggers below, so every path that changes an item (the consumer,
-- the API, the expiry sweeper, a replica elsewhere) leaves its trace in the same transaction.
CREATE TABLE IF NOT EXISTS review_history (
    seq         bigserial   PRIMARY KEY,
    proposal_id uuid        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    event       text        NOT NULL,
    actor       text,
    detail      jsonb       NOT NULL DEFAULT '{}',
    kind        text        NOT NULL,
    queue       text,
    status      text        NOT NULL,
    version     integer     NOT NULL
);
CREATE INDEX IF NOT EXISTS review_history_item ON review_history (proposal_id, seq);

-- Any change to an item is a new version.
CREATE OR REPLACE FUNCTION review_queue_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS review_queue_version ON review_queue;
CREATE TRIGGER review_queue_version BEFORE UPDATE ON review_queue
    FOR EACH ROW EXECUTE FUNCTION review_queue_version();

CREATE OR REPLACE FUNCTION review_queue_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    closed  boolean := NEW.status <> 'pending'
                       AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status);
    ran     boolean := NEW.execution_status IS NOT NULL
                       AND (TG_OP = 'INSERT' OR OLD.execution_id IS DISTINCT FROM NEW.execution_id);
    added   jsonb;
    origin  uuid;
BEGIN
    IF TG_OP = 'INSERT' AND NEW.status = 'pending' THEN
        INSERT INTO review_history (proposal_id, at, event, actor, detail, kind, queue, status, version)
        VALUES (NEW.proposal_id, NEW.enqueued_at, 'enqueued',
                coalesce(NEW.routed_by ->> 'rule_id', NEW.routed_by ->> 'identity'),
                jsonb_build_object('queue', NEW.queue, 'priority', NEW.priority,
                                   'required_approvals', NEW.required_approvals,
                                   'explanation', NEW.explanation),
                NEW.kind, NEW.queue, NEW.status, NEW.version);
        -- A conflict re-proposal names the decision it replaces: that item's history says so.
        origin := (NEW.proposal -> 'evidence' -> 'conflict' ->> 'decision_id')::uuid;
        IF origin IS NOT NULL THEN
            INSERT INTO review_history (proposal_id, event, actor, detail, kind, queue, status, version)
            SELECT q.proposal_id, 're-proposed', NEW.routed_by ->> 'identity',
                   jsonb_build_object('proposal_id', NEW.proposal_id),
                   q.kind, q.queue, q.status, q.version
            FROM review_queue q WHERE q.decision_id = origin;
        END IF;
    END IF;
    IF TG_OP = 'UPDATE' AND jsonb_array_length(NEW.approvals) > jsonb_array_length(OLD.approvals) THEN
        added := NEW.approvals -> (jsonb_array_length(NEW.approvals) - 1);
        INSERT INTO review_history (proposal_id, at, event, actor, detail, kind, queue, status, version)
        VALUES (NEW.proposal_id, (added ->> 'at')::timestamptz, 'approval', added ->> 'identity',
                jsonb_build_object('count', jsonb_array_length(NEW.approvals),
                                   'required', NEW.required_approvals,
                                   'comment', added -> 'comment',
                                   'with_changes', added -> 'changes' <> 'null'::jsonb),
                NEW.kind, NEW.queue, NEW.status, NEW.version);
    END IF;
    IF closed THEN
        INSERT INTO review_history (proposal_id, at, event, actor, detail, kind, queue, status, version)
        VALUES (NEW.proposal_id, coalesce(NEW.decided_at, now()),
                CASE WHEN NEW.status IN ('superseded', 'expired') THEN NEW.status ELSE 'decided' END,
                NEW.decided_by,
                jsonb_build_object('outcome', NEW.status, 'comment', NEW.comment,
                                   'explanation', NEW.decision_explanation),
                NEW.kind, NEW.queue, NEW.status, NEW.version);
    END IF;
    IF ran THEN
        INSERT INTO review_history (proposal_id, at, event, actor, detail, kind, queue, status, version)
        VALUES (NEW.proposal_id, NEW.executed_at,
                CASE NEW.execution_status WHEN 'applied' THEN 'executed' WHEN 'conflict' THEN 'conflicted'
                     ELSE NEW.execution_status END,
                'executor',
                jsonb_build_object('status', NEW.execution_status, 'error', NEW.execution_error,
                                   'execution_id', NEW.execution_id),
                NEW.kind, NEW.queue, NEW.status, NEW.version);
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS review_queue_history ON review_queue;
CREATE TRIGGER review_queue_history AFTER INSERT OR UPDATE ON review_queue
    FOR EACH ROW EXECUTE FUNCTION review_queue_history();

-- Every history row is announced to the API replicas (delivered on commit), which stream it.
CREATE OR REPLACE FUNCTION review_history_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('changegate_review', json_build_object(
        'seq', NEW.seq, 'proposal_id', NEW.proposal_id, 'event', NEW.event, 'at', NEW.at,
        'actor', NEW.actor, 'kind', NEW.kind, 'queue', NEW.queue, 'status', NEW.status,
        'version', NEW.version)::text);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS review_history_notify ON review_history;
CREATE TRIGGER review_history_notify AFTER INSERT ON review_history
    FOR EACH ROW EXECUTE FUNCTION review_history_notify();

-- A retried POST with the same Idempotency-Key (per identity) gets the first answer again.
CREATE TABLE IF NOT EXISTS review_idempotency (
    identity     text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    status       smallint,
    body         bytea,
    headers      jsonb,
    PRIMARY KEY (identity, key)
);
CREATE INDEX IF NOT EXISTS review_idempotency_age ON review_idempotency (created_at);
