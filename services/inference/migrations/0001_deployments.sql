-- Read model of deployments (one row per followed alias), written in the same
-- transaction as each deployment event and rebuildable from the event log.
CREATE TABLE deployments (
    model_name        text        NOT NULL,
    alias             text        NOT NULL,
    stream_version    bigint      NOT NULL,
    request_revision  bigint      NOT NULL,
    requested_version bigint      NOT NULL,
    traffic_share     double precision NOT NULL,
    alias_time        timestamptz,
    removed           boolean     NOT NULL,
    serving_version   bigint      NOT NULL,
    previous_version  bigint      NOT NULL,
    runtime           integer     NOT NULL,
    failure_version   bigint,
    failure_stage     text,
    failure_reason    text,
    failure_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, alias)
);
