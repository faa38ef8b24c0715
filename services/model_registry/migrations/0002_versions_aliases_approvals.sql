-- Versions, aliases and approvals; all maintained from the event log in the
-- transaction that appends, and rebuildable from it.

ALTER TABLE models
    ADD COLUMN policy bytea NOT NULL DEFAULT '',            -- PromotionPolicy protobuf
    ADD COLUMN latest_version bigint NOT NULL DEFAULT 0;

CREATE TABLE model_versions (
    model_name text        NOT NULL REFERENCES models (name),
    version    bigint      NOT NULL CHECK (version > 0),
    body       bytea       NOT NULL,                        -- ModelVersion protobuf
    created_at timestamptz NOT NULL,
    PRIMARY KEY (model_name, version)
);

-- version = 0 marks a deleted alias; the row stays so the alias's stream is known.
CREATE TABLE aliases (
    model_name     text             NOT NULL REFERENCES models (name),
    alias          text             NOT NULL,
    version        bigint           NOT NULL,
    traffic_share  double precision NOT NULL DEFAULT 0,
    updated_at     timestamptz      NOT NULL,
    updated_by     text             NOT NULL,
    stream_version bigint           NOT NULL,
    PRIMARY KEY (model_name, alias)
);

CREATE TABLE approvals (
    model_name  text        NOT NULL,
    version     bigint      NOT NULL,
    alias       text        NOT NULL,
    approver    text        NOT NULL,
    comment     text        NOT NULL,
    approved_at timestamptz NOT NULL,
    PRIMARY KEY (model_name, version, alias, approver),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);
