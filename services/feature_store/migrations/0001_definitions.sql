-- Every version of every definition, as applied (the protobuf), folded from the
-- *Defined events; rebuildable from the event log.
CREATE TABLE definitions (
    kind       text        NOT NULL,  -- entity, feature_view, on_demand_view, feature_service
    name       text        NOT NULL,
    version    integer     NOT NULL,  -- 0 for entities (unversioned)
    body       bytea       NOT NULL,
    defined_at timestamptz NOT NULL,
    defined_by text        NOT NULL,
    PRIMARY KEY (kind, name, version)
);
