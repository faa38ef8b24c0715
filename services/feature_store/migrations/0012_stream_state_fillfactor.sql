-- Tiles, rollups, lifetime and pending rows are created empty by the lock (tiles.py) and
-- rewritten by every batch that touches them. On full pages each rewrite moved the row to
-- another page and added an entry to every index of the table: in the ingest benchmark
-- 2% of tile updates were HOT. Room left on each page keeps a rewrite on its page (a HOT
-- update, no index entries). Applies to pages filled from now on; nothing is rewritten.
ALTER TABLE stream_tiles SET (fillfactor = 50);
ALTER TABLE stream_rollups SET (fillfactor = 50);
ALTER TABLE stream_lifetimes SET (fillfactor = 50);
ALTER TABLE stream_lifetime_pending SET (fillfactor = 50);
