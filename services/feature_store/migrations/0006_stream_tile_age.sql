-- Tiles older than every window that can still read them are pruned (stream_ingest.py);
-- this index finds them per view version without walking every entity's tiles.
CREATE INDEX stream_tiles_by_age ON stream_tiles (view, version, tile_start);
