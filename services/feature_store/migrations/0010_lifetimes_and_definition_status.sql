-- Lifetime aggregations and deleted / deprecated definitions (ADR 0022).

-- Per (view version, entity) with a lifetime aggregation: the merge of every event that
-- was "settled" when it arrived (its tile had started), in the same partial states as
-- tiles. Every read from then on includes it, so a lifetime read is this one row (and
-- the pending rows below) however long the entity's history. Never pruned.
CREATE TABLE stream_lifetimes (
    view       text    NOT NULL,
    version    integer NOT NULL,
    entity_key text    NOT NULL,
    state      jsonb   NOT NULL,
    PRIMARY KEY (view, version, entity_key)
);

-- Events dated after the tile of their arrival (a producer clock ahead, within the allowed
-- lateness), per tile: a read includes those whose tile has started; a pass folds them
-- into the lifetime row once it has (reads never depend on the pass).
CREATE TABLE stream_lifetime_pending (
    view       text        NOT NULL,
    version    integer     NOT NULL,
    entity_key text        NOT NULL,
    tile_start timestamptz NOT NULL,
    state      jsonb       NOT NULL,
    PRIMARY KEY (view, version, entity_key, tile_start)
);
CREATE INDEX stream_lifetime_pending_due ON stream_lifetime_pending (view, version, tile_start);

-- What DefinitionDeprecated / DefinitionDeleted events say of a definition, folded from
-- them with the definitions (rows of feature_store.definitions are kept as history):
-- deprecation is the reason (null: not deprecated); deleted says whether the name is
-- deleted now; deleted_through is the latest version any deletion covered (versions up
-- to it stay deleted when the name is re-created with a later version).
CREATE TABLE definition_status (
    kind            text    NOT NULL,
    name            text    NOT NULL,
    deprecation     text,
    deleted         boolean NOT NULL DEFAULT false,
    deleted_through integer,
    PRIMARY KEY (kind, name)
);
