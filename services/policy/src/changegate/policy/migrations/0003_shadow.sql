-- Shadow mode. A candidate policy routes every proposal beside the policy in force; its routes are
-- recorded here and never acted on. At most one candidate runs at a time.
CREATE TABLE IF NOT EXISTS policy_candidates (
    policy_hash    text        PRIMARY KEY,
    policy_version text        NOT NULL,
    content        text        NOT NULL,
    source         text        NOT NULL,
    started_by     text        NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT now(),
    stopped_at     timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS policy_candidates_one_running
    ON policy_candidates ((true)) WHERE stopped_at IS NULL;

-- What the candidate would have done with a proposal the policy in force routed (policy_routes).
CREATE TABLE IF NOT EXISTS policy_shadow_routes (
    proposal_id    uuid             NOT NULL,
    policy_hash    text             NOT NULL,
    policy_version text             NOT NULL,
    kind           text             NOT NULL,
    confidence     double precision NOT NULL,
    action         text             NOT NULL CHECK (action IN ('auto_apply', 'review', 'reject')),
    rule_id        text             NOT NULL,
    routed_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (proposal_id, policy_hash)
);

-- What a human decided on a routed proposal (from the decisions topic, signed by review-api): the
-- label shadow routes and suggestions are compared with.
CREATE TABLE IF NOT EXISTS policy_human_decisions (
    proposal_id uuid        PRIMARY KEY,
    kind        text        NOT NULL,
    confidence  double precision NOT NULL,
    outcome     text        NOT NULL CHECK (outcome IN ('approved', 'approved_with_changes', 'rejected')),
    decided_by  text        NOT NULL,
    proposed_at timestamptz NOT NULL,
    decided_at  timestamptz NOT NULL
);

-- Who made which candidate the policy in force, when, and what it replaced.
CREATE TABLE IF NOT EXISTS policy_promotions (
    promotion_id     bigserial   PRIMARY KEY,
    policy_hash      text        NOT NULL,
    policy_version   text        NOT NULL,
    promoted_by      text        NOT NULL,
    promoted_at      timestamptz NOT NULL DEFAULT now(),
    replaced_version text        NOT NULL,
    replaced_hash    text        NOT NULL,
    written_to       text        NOT NULL
);
