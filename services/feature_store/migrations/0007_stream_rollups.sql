-- Rollups of stream tiles (ADR 0011): the same partial aggregates over 60 tiles (one hour
-- of one-minute tiles), written by ingestion in the transaction that writes the tiles, so
-- a long window reads a few rollups instead of thousands of tiles. rollup_start is the
-- start of the rollup's first tile.
CREATE TABLE stream_rollups (
    view         text        NOT NULL,
    version      integer     NOT NULL,
    entity_key   text        NOT NULL,
    rollup_start timestamptz NOT NULL,
    state        jsonb       NOT NULL,
    PRIMARY KEY (view, version, entity_key, rollup_start)
);
CREATE INDEX stream_rollups_by_age ON stream_rollups (view, version, rollup_start);

-- View versions whose rollups hold every event their tiles hold: those created after
-- rollups existed (no tiles when applied) and those backfilled since. Reads of other
-- versions (tiles written before this migration) combine tiles only.
CREATE TABLE stream_rollups_complete (
    view    text    NOT NULL,
    version integer NOT NULL,
    PRIMARY KEY (view, version)
);
