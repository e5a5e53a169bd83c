-- What each human decision said of its proposal's reliability cells (reliability.observations):
-- one row per decision and cell, written in the transaction that closes the proposal, so a
-- redelivered decision adds nothing twice. Only human decisions are kept: an auto-applied outcome
-- counted as an approval would confirm the automation by its own say-so.
CREATE TABLE IF NOT EXISTS detector_reliability_observations (
    decision_id uuid        NOT NULL,
    cell        text        NOT NULL,
    held        boolean     NOT NULL,  -- approved unchanged (for this cell's field), else corrected
    decided_at  timestamptz NOT NULL,
    PRIMARY KEY (decision_id, cell)
);
CREATE INDEX IF NOT EXISTS detector_reliability_observations_decided
    ON detector_reliability_observations (decided_at);
