-- Proposals whose lifecycle has ended (a decision arrived: approved, rejected, expired, superseded,
-- auto-applied). A closed proposal is never opened again — not by a redelivered review request, not
-- by re-detecting the same proposal id — so it can never be superseded after the fact.
CREATE TABLE IF NOT EXISTS detector_closed_proposals (
    proposal_id uuid        PRIMARY KEY,
    outcome     text        NOT NULL,
    closed_at   timestamptz NOT NULL DEFAULT now()
);
