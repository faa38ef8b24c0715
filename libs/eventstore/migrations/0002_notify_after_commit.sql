-- Appends no longer NOTIFY inside their own transaction: a notifying transaction
-- holds a cluster-wide lock until its commit is flushed, which serialized every
-- append's disk flush. The event store now announces appends after commit (in
-- process, and with a coalesced NOTIFY from outside the transaction).
DROP TRIGGER events_appended ON events;
DROP FUNCTION notify_events_appended();
