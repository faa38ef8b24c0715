-- What a reader needs to extend a copy of the raw-event log instead of reading it again
-- (the parsed-event cache of point-in-time stream aggregates, ADR 0021).

-- The transaction that logged each event: the rows a snapshot S did not see are exactly
-- those with written_xid >= pg_snapshot_xmin(S) that pg_visible_in_snapshot(written_xid,
-- S) says were not visible (an xid below S's xmin had ended before S: committed rows are
-- in S, rolled-back ones nowhere). Rows logged before this migration carry its xid.
ALTER TABLE stream_events
    ADD COLUMN written_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX stream_events_written ON stream_events (source, written_xid);

-- Rows ever deleted per source (pruning): a copy made when the count was different
-- holds rows the log no longer has and is read again from scratch. Counted by a trigger
-- in the deleting transaction, so a snapshot sees the count and the deletions together.
CREATE TABLE stream_event_deletions (
    source  text   PRIMARY KEY,
    deleted bigint NOT NULL
);

CREATE FUNCTION count_stream_event_deletions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO feature_store.stream_event_deletions AS d (source, deleted)
    SELECT source, count(*) FROM gone GROUP BY source
    ON CONFLICT (source) DO UPDATE SET deleted = d.deleted + EXCLUDED.deleted;
    RETURN NULL;
END $$;

CREATE TRIGGER stream_events_deleted AFTER DELETE ON stream_events
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION count_stream_event_deletions();
