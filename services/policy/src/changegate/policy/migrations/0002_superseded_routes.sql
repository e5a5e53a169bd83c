-- A proposal superseded before the policy saw it (decisions and proposals travel on different
-- topics) is recorded as routed, so it is never routed at all.
ALTER TABLE policy_routes DROP CONSTRAINT IF EXISTS policy_routes_action_check;
ALTER TABLE policy_routes ADD CONSTRAINT policy_routes_action_check
    CHECK (action IN ('auto_apply', 'review', 'reject', 'superseded'));
