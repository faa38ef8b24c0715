"""Each feature service's reply entry per entity, kept ready in memory (ADR 0010).

Serving 100 entities of a 5-view service from the per-view tables touches ~3,000
scattered objects (hash slots, keys, rows, their times and fragments); on the
reference machine those cache misses cost 0.5-1 ms, most of the call. A
``VectorIndex`` holds, per entity, the finished reply part of one shape (consecutive
views of one join key in a feature service, with their feature counts and TTLs: the
whole service, or a run of it beside stream views or another entity's views) and the
last moment that part stays correct (its first value to expire). A read is then one
lookup and one copy per entity and run.

Entries are derived from the replica's rows and never disagree with them: the
replica drops an entity's entries whenever one of its rows changes, and a read
rebuilds an entry that is missing or past its moment from the rows, with the
same ``StoredView.part`` the view-by-view path uses. A new index fills in the
background; until then reads build entries as they go. Entities with no row in
any of the views get no entry, so a stream of unknown keys cannot grow memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from opentelemetry import metrics

from services.feature_store.domain.serving import wire
from services.feature_store.domain.serving.rows import (
    FOREVER_US,
    ServingRow,
    StoredView,
    ViewTables,
    epoch_us,
)

_log = logging.getLogger(__name__)
_meter = metrics.get_meter(__name__)
_entries_held = _meter.create_up_down_counter(
    "lathe.feature_store.online_replica.vector_entries",
    unit="{entry}",
    description="Ready reply entries (one per entity and feature-service shape) held",
)
_FILL_SLICE_S = 0.0002
"""How long a fill holds the event loop at a time: a read arriving meanwhile waits at most
about this (an entry of 5 views takes ~10 µs, so 256 at a time held reads back 2.5 ms)."""
_FILL_PAUSE_S = 0.0008
"""The pause after each slice, so a fill takes at most a fifth of the event loop. Yielding
with sleep(0) instead ran a slice between every step of a call in flight (a read takes
several turns of the loop): p99 3.5 ms while filling."""
_FILL_STEP = 8
"""Entities built between looks at the clock."""
_IDLE_S = 600.0
"""An index unused this long (e.g. its service was redefined) is dropped when another is made."""
_EVICTABLE_S = 60.0
"""An index unused this long may give its room to a new one."""
_RETRY_S = 10.0
"""How long a shape without room, or a full index that could not grow, waits to try again."""
_MIN_CAPACITY = 1024
_EMPTY: dict[str, ServingRow] = {}

Shape = tuple[StoredView, ...]
"""The views of a selection in reply order; every view has the same join key."""
Entry = tuple[int, bytes, bytes]
"""(valid through, in microseconds since the epoch; the entity's encoded FeatureVector
part for the shape's views; the ``results`` tag and length that make that part a whole
reply entry when the shape is the whole selection)."""


def build_entry(shape: Shape, tables: ViewTables, key: str, now_us: int) -> Entry | None:
    """The entity's FeatureVector part read at ``now_us``; None when it has no rows."""
    parts = []
    valid_until = FOREVER_US
    stored = False
    for view in shape:
        found = tables.get(view.key, _EMPTY).get(key)
        stored = stored or found is not None
        part, until = view.part(found, now_us)
        parts.append(part)
        valid_until = min(valid_until, until)
    if not stored:
        return None
    vector = b"".join(parts)
    return valid_until, vector, wire.result_header(len(vector))


class VectorIndex:
    """Ready entries of one shape, by entity key, at most ``capacity`` of them."""

    def __init__(self, shape: Shape, capacity: int) -> None:
        self.shape = shape
        self.capacity = capacity
        """Past it, entries are built for each read but not kept."""
        self.entries: dict[str, Entry] = {}
        absent = b"".join(view.absent for view in shape)
        self.absent: Entry = (FOREVER_US, absent, wire.result_header(len(absent)))
        """The entry of an entity with no rows (never stored)."""
        self.filled = False
        """Every entity that had rows when the fill began has had an entry built."""
        self.last_used = time.monotonic()

    def results(
        self, keys: list[str], tables: ViewTables, now: datetime, *, whole: bool = False
    ) -> list[bytes]:
        """The FeatureVector parts for ``keys`` read at ``now``; with ``whole`` (the shape
        is the whole selection) each preceded by its ``results`` tag and length."""
        now_us = epoch_us(now)
        get = self.entries.get
        out: list[bytes] = []
        add = out.append
        for key in keys:  # the hot loop: one lookup per entity
            entry = get(key)
            if entry is None or entry[0] < now_us:
                entry = self.refresh(key, tables, now_us)
            if whole:
                add(entry[2])
            add(entry[1])
        return out

    def refresh(self, key: str, tables: ViewTables, now_us: int) -> Entry:
        """Build (and keep, if the entity has rows) the entry of ``key``."""
        entry = build_entry(self.shape, tables, key, now_us)
        if entry is None:
            return self.absent
        if key not in self.entries:
            if len(self.entries) >= self.capacity:
                return entry
            _entries_held.add(1)
        self.entries[key] = entry
        return entry

    def drop(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            _entries_held.add(-1)

    def clear(self) -> None:
        _entries_held.add(-len(self.entries))
        self.entries = {}


class VectorIndexes:
    """The replica's indexes, at most ``max_entries`` entries in all.

    Each index reserves room for its views' entities and a quarter more (entities keep
    arriving) and grows when it fills up and there is room. A new index may take the
    room of indexes unused for a minute, least recently used first; when there is none,
    the shape is read view by view and tried again later, so two large services never
    take turns evicting each other.
    """

    def __init__(self, tables: Callable[[], ViewTables | None], *, max_entries: int) -> None:
        self._tables = tables
        self._max_entries = max_entries
        self._indexes: dict[Shape, VectorIndex] = {}
        self._by_view: dict[tuple[str, int], list[VectorIndex]] = {}
        self._fills: dict[Shape, asyncio.Task[None]] = {}
        self._retry_at: dict[Shape, float] = {}
        """When a shape that found no room, or an index that could not grow, is next tried."""

    def index_for(self, shape: Shape) -> VectorIndex | None:
        """The shape's index (made and filling in the background if new), or None when
        the replica is off or the index does not fit in ``max_entries`` now."""
        now = time.monotonic()
        index = self._indexes.get(shape)
        if index is not None:
            index.last_used = now
            if len(index.entries) >= index.capacity and now >= self._retry_at.get(shape, 0.0):
                self._grow(index)
            return index
        tables = self._tables()
        if tables is None or now < self._retry_at.get(shape, 0.0):
            return None
        return self._make(shape, tables)

    def invalidate(self, view: tuple[str, int], key: str) -> None:
        """``key``'s row of ``view`` changed: its entries must be rebuilt."""
        for index in self._by_view.get(view, ()):
            index.drop(key)

    def clear(self) -> None:
        for shape in list(self._indexes):
            self._remove(shape)
        self._retry_at.clear()

    def _make(self, shape: Shape, tables: ViewTables) -> VectorIndex | None:
        now = time.monotonic()
        for idle in [s for s, i in self._indexes.items() if now - i.last_used > _IDLE_S]:
            self._remove(idle)
        needed = _entities(shape, tables)
        capacity = min(_room_for(needed), self._max_entries)
        fits = needed <= self._max_entries
        evictable = sorted(
            (i for i in self._indexes.values() if now - i.last_used > _EVICTABLE_S),
            key=lambda i: i.last_used,
        )
        while fits and self._reserved() + capacity > self._max_entries and evictable:
            self._remove(evictable.pop(0).shape)
        if not fits or self._reserved() + capacity > self._max_entries:
            self._retry_at[shape] = now + _RETRY_S
            _log.info(
                "no room for ready entries of %s (%d entities) within the replica's limit "
                "beside indexes in use; reading view by view, trying again in %.0f s",
                [view.key for view in shape],
                needed,
                _RETRY_S,
            )
            return None
        index = self._indexes[shape] = VectorIndex(shape, capacity)
        for view in dict.fromkeys(view.key for view in shape):
            self._by_view.setdefault(view, []).append(index)
        self._start_fill(index)
        return index

    def _grow(self, index: VectorIndex) -> None:
        """Give a full index room for the entities its views hold now, if there is room."""
        tables = self._tables()
        needed = _entities(index.shape, tables) if tables is not None else 0
        wanted = min(_room_for(needed), self._max_entries)
        if wanted > index.capacity and (
            self._reserved() - index.capacity + wanted <= self._max_entries
        ):
            index.capacity = wanted
            self._start_fill(index)
        else:
            self._retry_at[index.shape] = time.monotonic() + _RETRY_S

    def _start_fill(self, index: VectorIndex) -> None:
        if index.shape in self._fills:
            return
        self._fills[index.shape] = asyncio.get_running_loop().create_task(
            self._fill(index), name=f"fill serving vectors {[v.key for v in index.shape]}"
        )

    def _reserved(self) -> int:
        return sum(index.capacity for index in self._indexes.values())

    def _remove(self, shape: Shape) -> None:
        index = self._indexes.pop(shape)
        for view in dict.fromkeys(view.key for view in shape):
            self._by_view[view].remove(index)
            if not self._by_view[view]:
                del self._by_view[view]
        fill = self._fills.pop(shape, None)
        if fill is not None:
            fill.cancel()
        index.clear()

    async def _fill(self, index: VectorIndex) -> None:
        started = time.monotonic()
        try:
            if not await self._fill_entries(index):
                return
            index.filled = True
            _log.info(
                "ready entries for %s: %d entities in %.1f s",
                [view.key for view in index.shape],
                len(index.entries),
                time.monotonic() - started,
            )
        except Exception:  # reads still build entries as they go
            _log.exception("filling ready entries for %s failed", [v.key for v in index.shape])
        finally:
            if self._fills.get(index.shape) is asyncio.current_task():
                del self._fills[index.shape]

    async def _fill_entries(self, index: VectorIndex) -> bool:
        """Build the entry of every entity of the index's views; False if it stopped
        because the replica turned off or the index was dropped."""
        tables = self._tables()
        now_us, slice_ends = epoch_us(datetime.now(UTC)), time.perf_counter() + _FILL_SLICE_S
        for view in dict.fromkeys(view.key for view in index.shape):
            keys = list(tables.get(view, _EMPTY)) if tables is not None else []
            for start in range(0, len(keys), _FILL_STEP):
                if time.perf_counter() >= slice_ends:
                    await asyncio.sleep(_FILL_PAUSE_S)
                    tables = self._tables()
                    now_us = epoch_us(datetime.now(UTC))
                    slice_ends = time.perf_counter() + _FILL_SLICE_S
                if tables is None or self._indexes.get(index.shape) is not index:
                    return False
                for key in keys[start : start + _FILL_STEP]:
                    if key not in index.entries:
                        index.refresh(key, tables, now_us)
        return True


def _entities(shape: Shape, tables: ViewTables) -> int:
    """About how many entities have rows in the shape's views (the largest view's count)."""
    return max(len(tables.get(view.key, _EMPTY)) for view in shape)


def _room_for(entities: int) -> int:
    return max(entities + entities // 4, _MIN_CAPACITY)
