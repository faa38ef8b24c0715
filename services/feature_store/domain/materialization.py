"""Which source rows a materialization run reads (pure logic; ADR 0019).

A batch source row has a *watermark* — when it became known: the source's created-time
column, or its event time when it has none — and an event time. What a view version has
loaded is kept as a rectangle, ``Loaded``: every row with ``watermark <= through`` and
``event_time <= event_through`` (no bound when None). A run at ``now`` with an event-time
bound ``end_time`` (None: none) reads the rows of the new rectangle (``now``,
``end_time``) that were outside the old one, in watermark order, and each page it commits
moves the rectangle as far as the pages prove: exact, resumable, no row read twice.

What it cannot see: a row that lands *later* with a watermark at or below ``through``
(a late writer back-dating its known-at time). ``start_time`` re-reads every row with a
watermark at or after it (and within the bounds); rows already in the offline log are
recognized and not written again. That is what a late writer runs after landing rows
(README, "Materialize").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from libs.errors import FailedPrecondition
from services.feature_store.domain.times import utc
from services.feature_store.domain.values import to_python
from services.feature_store.domain.writes import IngestRow

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Loaded:
    """What a view version has loaded: every source row inside the rectangle."""

    through: datetime
    """Rows with a watermark at or before this ..."""
    event_through: datetime | None
    """... and an event time at or before this (None: any event time)."""


@dataclass(frozen=True)
class RunScope:
    """The source rows one run reads: inside (known_until, event_until), outside what
    was read before."""

    known_until: datetime
    """Watermark <= this: only rows already known (the run's start)."""
    event_until: datetime | None
    """Event time <= this (None: any, so rows of the future are loaded too)."""
    read_through: datetime | None
    """Rows with watermark <= this and event time <= ``read_events`` were read before
    (None: nothing was)."""
    read_events: datetime | None
    """See ``read_through`` (None: any event time)."""
    recheck_through: datetime | None
    """Pages whose first watermark is at or before this may hold rows already written
    (a re-run, a widened event bound, an interrupted run): they are compared with the
    offline log first. None: no page can."""


def run_scope(
    view: str,
    loaded: Loaded | None,
    *,
    now: datetime,
    end_time: datetime | None,
    start_time: datetime | None,
) -> RunScope:
    """The rows a run reads; FailedPrecondition when ``end_time`` would narrow the event
    bound a previous run loaded through (rows known since would never be read)."""
    if loaded is None:
        return RunScope(now, end_time, None, None, None)
    if end_time is not None and (loaded.event_through is None or end_time < loaded.event_through):
        already = (
            "every event time"
            if loaded.event_through is None
            else f"event time {loaded.event_through.isoformat()}"
        )
        raise FailedPrecondition(
            f"feature view {view!r} is materialized through {already} already; an end_time "
            f"of {end_time.isoformat()} would leave rows known since unread. Pass an end_time "
            "at or after it, or none; to re-read rows, pass start_time"
        )
    read_through = loaded.through
    if start_time is not None and start_time <= loaded.through:
        read_through = start_time - _MICROSECOND  # watermarks are microseconds: >= start
    return RunScope(now, end_time, read_through, loaded.event_through, loaded.through)


def advanced(loaded: Loaded | None, scope: RunScope, mark: datetime) -> Loaded | None:
    """What is loaded once every row of ``scope`` with a watermark <= ``mark`` is.

    Rows of the scope below the old ``through`` (outside the old event bound, or
    re-read) come first in watermark order; until the pages pass the old ``through``,
    the old rectangle is all that is proven."""
    if loaded is not None and mark < loaded.through:
        return loaded
    return Loaded(mark, scope.event_until)


def finished(loaded: Loaded | None, scope: RunScope) -> Loaded | None:
    """What is loaded once the run read every row of its scope (None: nothing ever)."""
    if loaded is None:
        return None
    return Loaded(loaded.through, scope.event_until)


def unwritten(rows: Sequence[IngestRow], written: Iterable[Sequence[object]]) -> list[IngestRow]:
    """``rows`` less those the offline log already holds. ``written`` are log rows of
    (entity key, event time, created time, *values); rows are compared whole, as many
    times as the log holds them."""
    held = Counter(_identity(row[0], row[1], row[2], row[3:]) for row in written)
    fresh = []
    for row in rows:
        assert row.created_time is not None, "source rows carry their created time"
        identity = _identity(
            row.entity_key, row.event_time, row.created_time, [to_python(v) for v in row.values]
        )
        if held[identity]:
            held[identity] -= 1
        else:
            fresh.append(row)
    return fresh


def _identity(
    key: object, event: object, created: object, values: Sequence[object]
) -> tuple[object, ...]:
    return (
        key,
        utc(event),  # type: ignore[arg-type]
        utc(created),  # type: ignore[arg-type]
        *(utc(v) if isinstance(v, datetime) else v for v in values),
    )
