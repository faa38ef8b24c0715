"""Following an event store as it grows, without ever skipping a late commit.

Positions come from a sequence, drawn when a row is inserted, long before its
transaction commits. A reader that simply remembers the highest position it has
seen skips an event that commits *after* a higher one. The tailer instead emits
only the gap-free prefix after its checkpoint. A hole in that prefix is either
a transaction still in flight (which will fill it) or one that rolled back
(which never will). The tailer tells them apart with Postgres snapshots: it
notes the snapshot's ``xmax`` when it first sees the hole, and once a later
snapshot's ``xmin`` has passed that value, every transaction that could have
drawn the missing position has ended, so a hole still there is permanent.
Writers are never serialized; see docs/adr/0002-gap-safe-event-tailing.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from libs.db import quote_ident
from libs.eventstore.model import RecordedEvent
from libs.eventstore.store import EVENT_COLUMNS, record_from_row


@dataclass(frozen=True)
class _PendingGap:
    below_position: int
    """Every missing position below this one was drawn before ``horizon_xid``."""
    horizon_xid: int
    """The snapshot xmax when the gap was first seen."""


@dataclass(frozen=True)
class TailBatch:
    events: list[RecordedEvent]
    waiting_on_gap: bool
    """True when reading stopped at a hole that may still fill: poll again soon."""


class EventTailer:
    """Reads the events after a position in order, gap-safe; one instance per reader."""

    def __init__(self, schema: str, *, position: int = 0) -> None:
        s = quote_ident(schema, what="event store schema")
        self._query = f"""
            SELECT snap.xmin, snap.xmax, e.*
            FROM (SELECT pg_snapshot_xmin(cur)::text::bigint AS xmin,
                         pg_snapshot_xmax(cur)::text::bigint AS xmax
                  FROM pg_current_snapshot() AS cur) AS snap
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
        rows = await conn.fetch(self._query, self._position, limit)
        xmin = rows[0]["xmin"]
        xmax = rows[0]["xmax"]
        events: list[RecordedEvent] = []
        for row in rows:
            position = row["global_position"]
            if position is None:  # the LEFT JOIN's empty row: nothing after the checkpoint
                break
            expected = self._position + 1
            if position != expected and not self._skip_permanent_gap(position, xmin, xmax):
                return TailBatch(events, waiting_on_gap=True)
            events.append(record_from_row(row))
            self._position = position
        if self._gap is not None and self._position >= self._gap.below_position:
            self._gap = None
        return TailBatch(events, waiting_on_gap=False)

    def _skip_permanent_gap(self, next_position: int, xmin: int, xmax: int) -> bool:
        """Decide whether the hole before ``next_position`` can be skipped.

        Moves the checkpoint past whatever part of the hole is known to be
        permanent and returns True when nothing of it is left.
        """
        gap = self._gap
        if gap is not None and xmin >= gap.horizon_xid:
            # Every transaction that could fill positions below gap.below_position is over.
            self._position = max(self._position, min(next_position, gap.below_position) - 1)
            self._gap = None
            if self._position + 1 == next_position:
                return True
        if self._gap is None:
            self._gap = _PendingGap(below_position=next_position, horizon_xid=xmax)
        return False
