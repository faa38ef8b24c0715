-- The by-age indexes (pruning) also end in entity_key. With only (view, version, start),
-- a generic plan of the per-row UPDATE that writes a merged state used them and filtered
-- entity_key over every entity of that tile or hour: a rollup UPDATE batch took 14 ms
-- instead of ~3 (1,000 rows per hour in the benchmark); busy minutes hit tiles the same way.
-- Ending in entity_key makes any plan that picks them exact.
DROP INDEX stream_tiles_by_age;
CREATE INDEX stream_tiles_by_age ON stream_tiles (view, version, tile_start, entity_key);
DROP INDEX stream_rollups_by_age;
CREATE INDEX stream_rollups_by_age ON stream_rollups (view, version, rollup_start, entity_key);
