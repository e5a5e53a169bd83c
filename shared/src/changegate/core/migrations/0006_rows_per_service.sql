-- Each service owns its rows of the shared tables: a service's role (changegate_<service>, made by
-- `changegate migrate`) sees, claims, writes and deletes only its own idempotency claims and outbox
-- rows, so no service can mark another's events as processed or drop another's messages. The
-- owner (migrations, operator tools) is not subject to these policies.

-- The service a role runs: changegate_review_api -> review-api; NULL for any other role.
CREATE OR REPLACE FUNCTION changegate_role_service() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.starts_with(current_user::text, 'changegate_')
        THEN pg_catalog.replace(pg_catalog.substr(current_user::text, 12), '_', '-') END
$$;

-- A claim's consumer is its service's name, or starts with it and a dash (audit-executions).
CREATE OR REPLACE FUNCTION changegate_owns_consumer(consumer text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT consumer = public.changegate_role_service()
        OR pg_catalog.starts_with(consumer, public.changegate_role_service() || '-')
$$;

ALTER TABLE changegate_processed_events ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_claims ON changegate_processed_events;
CREATE POLICY own_claims ON changegate_processed_events
    USING (public.changegate_owns_consumer(consumer))
    WITH CHECK (public.changegate_owns_consumer(consumer));

ALTER TABLE changegate_outbox ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_outbox ON changegate_outbox;
CREATE POLICY own_outbox ON changegate_outbox
    USING (service = public.changegate_role_service())
    WITH CHECK (service = public.changegate_role_service());

ALTER TABLE changegate_outbox_failed ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_outbox_failed ON changegate_outbox_failed;
CREATE POLICY own_outbox_failed ON changegate_outbox_failed
    USING (service = public.changegate_role_service())
    WITH CHECK (service = public.changegate_role_service());
