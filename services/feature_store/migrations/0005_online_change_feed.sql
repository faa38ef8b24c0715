-- Which transaction last changed each online row, so serving replicas can follow changes
-- exactly: every transaction older than a snapshot's xmin had finished when the snapshot
-- was taken, so "rows changed by xid >= the last horizon" never misses a late commit
-- (the same reasoning as the event tailer's, ADR 0002; see ADR 0009).
ALTER TABLE online_values ADD COLUMN changed_by xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX online_values_changed_by ON online_values (changed_by);
