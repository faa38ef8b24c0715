"""Parsed raw events per stream view version, kept between training sets (ADR 0021).

Point-in-time stream aggregates read a source's raw-event log and parse every event as
the view sees it (``parse_event``): at ~5-45 µs an event that was most of a training
set's cost. This cache keeps, per view version, the accepted events of the log from some
arrival time on, already parsed into arrays (``EventArrays``), with the Postgres snapshot
they were read at. A later call reads only what changed since:

- events logged by transactions that snapshot did not see (``written_xid``, one index
  range scan of the recent rows: late events, backfill imports of old history alike);
- events arrived before the copy's lower bound, when a call reaches further back;
- everything again when rows were deleted from the source (pruning; counted per source
  by a trigger) or the copy is evicted.

All reads of one call run in one REPEATABLE READ transaction, whose snapshot becomes the
copy's: the copy is exactly what a plain read in that transaction would return, parsed
by the same function, so answers do not change (tests/feature_store/test_event_cache.py
compares cached and plain answers). The selection handed to the computation is that of a
plain read (the same arrival range, the labels' entities only), or the whole copy when
what a plain read leaves out is under half of it and changes no answer
(``_Copy.select``).

One process's memory: bounded by ``max_events`` over all views (least recently used
copies go first; a view larger than the bound is used once and dropped).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import pyarrow as pa

from services.feature_store.domain.streaming.aggregation import (
    StreamViewSpec,
    from_us,
    to_us,
)
from services.feature_store.domain.streaming.as_of import (
    EventArrays,
    EventColumns,
    sequence_keys,
)
from services.feature_store.domain.streaming.events import (
    EventRejected,
    RawEvent,
    decode_payload,
    parse_event,
)
from services.feature_store.store import stream_events

DEFAULT_MAX_EVENTS = 20_000_000
"""Parsed events kept over all views (arrays: ~60-100 bytes an event; scalar columns
are kept as Python decimals, more)."""


async def parse_all(
    spec: StreamViewSpec, raw_events: AsyncIterator[RawEvent], wanted: Collection[str] | None
) -> EventColumns:
    """The accepted events of ``raw_events`` (of the ``wanted`` entities, if given)."""
    events = EventColumns.empty(spec)
    keys = sequence_keys(spec)
    async for raw in raw_events:
        try:
            event = parse_event(
                spec,
                decode_payload(raw.payload),
                arrival_us=to_us(raw.arrival_time),
                sequence=raw.stream_sequence,
            )
        except EventRejected:
            continue
        if wanted is None or event.entity_key in wanted:
            events.append(event, spec.columns, spec.distinct_columns, keys)
    return events


@dataclass
class _Copy:
    """The accepted events of one view version that arrived at or after ``arrived_from``
    (µs; None: all), as of ``snapshot``, with ``deleted`` the source's deletion count."""

    events: EventArrays
    arrived_from: int | None
    snapshot: str
    deleted: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def covers(self, arrived_from: int | None) -> bool:
        return self.arrived_from is None or (
            arrived_from is not None and arrived_from >= self.arrived_from
        )

    def select(
        self, arrived_from: int | None, arrived_until: int, label_keys: pa.Array
    ) -> tuple[EventArrays, np.ndarray]:
        """The events the computation needs for these labels, and each label's entity
        code in them (``EventArrays.label_codes``).

        A plain read returns those that arrived in [from, until] of the labels' entities.
        Events of other entities, and events that arrived after every label's time,
        change no answer (the computation matches entities and checks each event's
        arrival against each label's time), so when they are under half of the copy
        the whole copy is used rather than a subset copied out; events that arrived
        before ``arrived_from`` are always left out, as a plain read leaves them.
        """
        # Labels matched through the copy's entity dictionary (sorted once per copy): the
        # label strings are hashed once, and the events' not at all.
        entity, dictionary, _ = self.events.sorted()
        codes = self.events.label_codes(label_keys)
        held = np.zeros(len(dictionary), dtype=bool)
        held[codes[codes >= 0]] = True
        arrival = self.events.arrival_us
        needed = (arrival <= arrived_until) & held[entity]
        if arrived_from is None or arrival.min(initial=arrived_from) >= arrived_from:
            if 2 * np.count_nonzero(needed) >= len(needed):
                return self.events, codes  # arrays are never changed in place
        else:
            needed &= arrival >= arrived_from
        return self.events.take(np.flatnonzero(needed)), codes


class ParsedEventCache:
    """Per process: parsed raw events per view version, extended between calls."""

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self._max_events = max_events
        self._copies: OrderedDict[tuple[object, ...], _Copy] = OrderedDict()

    async def events(
        self,
        pool: asyncpg.Pool,
        spec: StreamViewSpec,
        identity: tuple[object, ...],
        *,
        arrived_from: int | None,
        arrived_until: int,
        label_keys: pa.Array,
    ) -> tuple[EventArrays, np.ndarray]:
        """The accepted events of ``spec``'s source (``identity``: the view version) that
        arrived in ``[arrived_from, arrived_until]`` (µs; from None: from the start), of
        the entities of ``label_keys`` (a string array), as of now — or a superset that
        gives the same answers (``_Copy.select``); and each label's entity code in them
        (for ``compute_as_of``)."""
        copy = self._copies.get(identity)
        lock = copy.lock if copy is not None else asyncio.Lock()
        async with lock:
            copy = self._copies.get(identity)
            async with (
                pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                snapshot, deleted = await stream_events.log_state(conn, spec.source)
                if copy is None or copy.deleted != deleted:
                    read = stream_events.read_events(
                        conn, spec.source, arrived_from=_at(arrived_from)
                    )
                    copy = _Copy(
                        EventArrays.of(spec, await parse_all(spec, read, None)),
                        arrived_from,
                        snapshot,
                        deleted,
                        lock=lock,
                    )
                else:
                    # What the copy's snapshot did not see, of the range it holds; then,
                    # when this call reaches further back, the older events as of now.
                    read = stream_events.read_unseen_events(
                        conn, spec.source, copy.snapshot, arrived_from=_at(copy.arrived_from)
                    )
                    unseen = EventArrays.of(spec, await parse_all(spec, read, None))
                    if not copy.covers(arrived_from):
                        read = stream_events.read_events(
                            conn,
                            spec.source,
                            arrived_from=_at(arrived_from),
                            arrived_before=_at(copy.arrived_from),
                        )
                        older = EventArrays.of(spec, await parse_all(spec, read, None))
                        copy.events, copy.arrived_from = older.concat(copy.events), arrived_from
                    copy.events = copy.events.concat(unseen)
                    copy.snapshot = snapshot
            self._keep(identity, copy)
            return copy.select(arrived_from, arrived_until, label_keys)

    def _keep(self, identity: tuple[object, ...], copy: _Copy) -> None:
        self._copies[identity] = copy
        self._copies.move_to_end(identity)
        total = sum(len(c.events) for c in self._copies.values())
        while total > self._max_events and self._copies:
            _, evicted = self._copies.popitem(last=False)
            total -= len(evicted.events)


def _at(us: int | None) -> object:
    return None if us is None else from_us(us)
