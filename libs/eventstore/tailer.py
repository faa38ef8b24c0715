"""Following an event store as it grows, without ever skipping a late commit.

Positions come from a sequence, drawn when a row is inserted, long before its
transaction commits. A reader that simply remembers the highest position it has
seen skips an event that commits *after* a higher one. The tailer instead emits
only the gap-free prefix after its checkpoint. A hole in that prefix is either
a transaction still in flight (which will fill it) or one that rolled back
(which never will). To tell them apart, the tailer takes a fresh transaction id
H when it first sees the hole: every writer that drew a missing position got
its own id before drawing it (appends write the stream row first), so each has
an id below H. Once a later snapshot's ``xmin`` reaches H, all of them have
ended, and a hole still there is permanent. Writers are never serialized; see
docs/adr/0002-gap-safe-event-tailing.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from libs.db import quote_ident
from libs.eventstore.model import RecordedEvent
from libs.eventstore.store import EVENT_COLUMNS, record_from_row

# Assigns the caller a transaction id: one greater than every id handed out before.
_NEW_XID = "SELECT pg_current_xact_id()::text::bigint"


@dataclass(frozen=True)
class _PendingGap:
    below_position: int
    """Every missing position below this one was drawn by a writer whose id < horizon."""
    horizon_xid: int


@dataclass(frozen=True)
class TailBatch:
    events: list[RecordedEvent]
    waiting_on_gap: bool
    """True when reading stopped at a hole that may still fill: poll again soon."""


class EventTailer:
    """Reads the events after a position in order, gap-safe; one instance per reader.

    Use it on a connection outside any transaction: it needs each read to see
    a fresh snapshot, and its own short transaction to end.
    """

    def __init__(self, schema: str, *, position: int = 0) -> None:
        s = quote_ident(schema, what="event store schema")
        self._query = f"""
            SELECT snap.xmin, e.*
            FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) AS snap
            LEFT JOIN LATERAL (
                SELECT {EVENT_COLUMNS} FROM {s}.events
                WHERE global_position > $1 ORDER BY global_position LIMIT $2
            ) AS e ON true"""
        self._position = position
        self._gap: _PendingGap | None = None

    @property
    def position(self) -> int:
        """The last position handed out; the next batch starts after it."""
        return self._position

    async def read(self, conn: asyncpg.Connection, limit: int = 500) -> TailBatch:
        """The next events in position order, up to ``limit``, never past an open hole."""
        if conn.is_in_transaction():
            raise RuntimeError("EventTailer.read needs a connection outside any transaction")
        rows = await conn.fetch(self._query, self._position, limit)
        xmin = rows[0]["xmin"]
        events: list[RecordedEvent] = []
        for row in rows:
            position = row["global_position"]
            if position is None:  # the LEFT JOIN's empty row: nothing after the checkpoint
                break
            if position != self._position + 1 and not self._skip_permanent_gap(position, xmin):
                if self._gap is None:
                    horizon = await conn.fetchval(_NEW_XID)
                    self._gap = _PendingGap(below_position=position, horizon_xid=horizon)
                return TailBatch(events, waiting_on_gap=True)
            events.append(record_from_row(row))
            self._position = position
        if self._gap is not None and self._position >= self._gap.below_position:
            self._gap = None
        return TailBatch(events, waiting_on_gap=False)

    def _skip_permanent_gap(self, next_position: int, xmin: int) -> bool:
        """Move past whatever part of the hole before ``next_position`` is permanent.

        Returns True when nothing of the hole is left, so ``next_position`` is next.
        """
        gap = self._gap
        if gap is None or xmin < gap.horizon_xid:
            return False
        # Every writer that could fill positions below gap.below_position has ended.
        self._position = max(self._position, min(next_position, gap.below_position) - 1)
        self._gap = None
        return self._position + 1 == next_position
