-- Logged decisions of policies (one row per decision id, written in the same transaction
-- as the PredictionLogged events of their batch) and the rewards joined to them (issue 14,
-- ADR 0024). Rebuildable from the event log: PredictionLogged with a chosen action,
-- RewardJoined and RewardRefused.
CREATE TABLE decisions (
    decision_id   text        PRIMARY KEY,
    model_name    text        NOT NULL,
    model_version bigint      NOT NULL,
    decide_time   timestamptz NOT NULL,
    -- The PredictionLogged event (protobuf): context, distribution, propensity, policy.
    payload       bytea       NOT NULL
);
CREATE INDEX decisions_by_model_time ON decisions (model_name, decide_time, decision_id);

-- At most one reward per decision and reward definition: the first joined stands.
CREATE TABLE rewards (
    decision_id       text             NOT NULL REFERENCES decisions (decision_id),
    definition        text             NOT NULL,
    definition_version integer         NOT NULL,
    reward            double precision NOT NULL,
    reward_time       timestamptz      NOT NULL,
    outcome_id        text             NOT NULL,
    joined_at         timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (decision_id, definition, definition_version)
);

-- Outcomes that were not joined, with the reason (counted by reason; never joined later).
CREATE TABLE reward_refusals (
    outcome_id         text        PRIMARY KEY,
    decision_id        text        NOT NULL,
    definition         text        NOT NULL,
    definition_version integer     NOT NULL,
    reason             text        NOT NULL,
    detail             text        NOT NULL,
    refused_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reward_refusals_by_reason ON reward_refusals (reason, definition);
