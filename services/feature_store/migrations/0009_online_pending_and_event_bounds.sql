-- Online rows whose event time was still ahead when they were written (known now, true
-- later). online_values keeps each entity's latest row that is already true; a row of the
-- future waits here beside it, so a read at time t answers the latest row with
-- event_time <= t of the two (ADR 0019). Rows are followed by the replicas through the same
-- change feed as online_values (changed_by, NOTIFY); the promotion pass moves rows whose
-- time has come into online_values (by the same latest-wins rule) and deletes them, which
-- needs no tombstone: a replica folds a due row into the entity's current row by itself.
CREATE TABLE online_pending (
    view         text        NOT NULL,
    version      integer     NOT NULL,
    entity_key   text        NOT NULL,
    event_time   timestamptz NOT NULL,
    created_time timestamptz NOT NULL,
    row          bytea       NOT NULL,  -- FeatureRow protobuf, values in feature order
    features     integer     NOT NULL,
    changed_by   xid8        NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (view, version, entity_key, event_time)
);
CREATE INDEX online_pending_changed_by ON online_pending (changed_by);
CREATE INDEX online_pending_due ON online_pending (event_time);

-- A materialization's event-time bound: every source row with watermark <= through and
-- event_time <= event_through has been loaded. NULL: no bound (every event time), which is
-- what runs before this column loaded.
ALTER TABLE materializations ADD COLUMN event_through timestamptz;
