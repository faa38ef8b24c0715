-- ListDecisions pages in the order decisions were written, not by decide time: a row is
-- written at the logger's flush (0.2 s later, much later after a Postgres outage), so a
-- page read by decide time could move its cursor past a decision written afterwards.
-- written_xid is the writing transaction: a page lists only rows written by transactions
-- below its snapshot's xmin (all ended: no row can ever join them), so a cursor of
-- (written_xid, decision_id) never passes a row that is still to come. Rows written
-- before this migration carry its xid.
ALTER TABLE decisions
    ADD COLUMN written_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX decisions_by_model_written ON decisions (model_name, written_xid, decision_id);
