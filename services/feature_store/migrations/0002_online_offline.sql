-- Online store: the latest row per (view, version, entity) — what GetOnlineFeatures reads,
-- one primary-key probe per entity and view.
CREATE TABLE online_values (
    view         text        NOT NULL,
    version      integer     NOT NULL,
    entity_key   text        NOT NULL,
    row          bytea       NOT NULL,  -- FeatureRow protobuf, values in feature order
    event_time   timestamptz NOT NULL,
    created_time timestamptz NOT NULL,
    PRIMARY KEY (view, version, entity_key)
);

-- Ingestion bookkeeping: how far each batch view has been materialized.
CREATE TABLE materializations (
    view        text        NOT NULL,
    version     integer     NOT NULL,
    through     timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (view, version)
);

-- Rows kept out of the stores by a QUARANTINE policy, for inspection.
CREATE TABLE quarantine (
    view         text        NOT NULL,
    version      integer     NOT NULL,
    entity_key   text        NOT NULL,
    event_time   timestamptz NOT NULL,
    row          bytea       NOT NULL,
    violations   text[]      NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
