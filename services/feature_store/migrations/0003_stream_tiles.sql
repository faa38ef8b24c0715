-- Streaming aggregations (ADR 0007).

-- Partial aggregates per (view version, entity, tile): count, exact sums (decimal
-- strings), min, max and last per aggregated column, and the latest event time. Online
-- reads combine the tiles of a window at read time; ingestion locks a tile's row while
-- it merges an event in.
CREATE TABLE stream_tiles (
    view       text        NOT NULL,
    version    integer     NOT NULL,
    entity_key text        NOT NULL,
    tile_start timestamptz NOT NULL,
    state      jsonb       NOT NULL,
    PRIMARY KEY (view, version, entity_key, tile_start)
);

-- Every raw business event that was a JSON object, per stream source, with when it became
-- known (JetStream's stored time): backfills and point-in-time aggregates read it, and
-- its primary key makes re-applying an event (a replay) a no-op. Entity key and event
-- time are read from the payload per view (views of one source may key it differently).
CREATE TABLE stream_events (
    source          text        NOT NULL,
    event_id        uuid        NOT NULL,
    stream_sequence bigint      NOT NULL,
    arrival_time    timestamptz NOT NULL,
    payload         bytea       NOT NULL,  -- the message exactly as published (JSON)
    PRIMARY KEY (source, event_id)
);
CREATE INDEX stream_events_arrival ON stream_events (source, arrival_time);

-- Events a view could not use, counted by reason (not_json, missing_entity, late, ...);
-- view '' and version 0 for reasons found before any view looked (e.g. not JSON).
CREATE TABLE stream_rejections (
    source   text        NOT NULL,
    view     text        NOT NULL,
    version  integer     NOT NULL,
    reason   text        NOT NULL,
    count    bigint      NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (source, view, version, reason)
);
