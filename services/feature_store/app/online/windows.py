"""Online reads of stream views: tiles combined into window values at read time.

One query fetches, for every requested (view version, entity), what covers its largest
window: rollups of 60 tiles wherever one fits inside a window's band, and tiles at the
edges (ADR 0011; tiles only for versions whose rollups are not complete), or, for a view
of LAST_N windows only, its n newest tiles (``StreamViewSpec.newest_tiles``; the whole
window again in the rare case they hold fewer than n events). Each window's
value is then computed for the read time, so a 1-hour count read at 10:30 leaves out
events before 9:30 even if nothing arrived since. The result has the
online store's shape (a FeatureRow and an event time per entity), so the online reader
treats stream views like the others (TTL included). An entity with no event in any
window is absent: NOT_FOUND. Lifetime aggregations read the entity's lifetime state and
its pending rows of tiles already started (ADR 0022), in a second query run alongside.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.serving.rows import ServingRow, ViewTables
from services.feature_store.domain.streaming.aggregation import (
    StreamViewSpec,
    TileState,
    WindowValues,
    combine,
    decode_state,
    floor_tile,
    from_us,
    holds_every_newest,
    read_spans,
    spec_of,
    to_us,
)
from services.feature_store.store import tiles

_RECHECK_S = 30.0
ViewKey = tuple[str, int, str]
"""(view, version, entity key), as the online store keys rows."""


class WindowReader:
    """Reads stream views for ``OnlineReader``: tiles in, online-store rows out."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._specs: dict[tuple[str, int], tuple[m.FeatureView, StreamViewSpec]] = {}
        self._rolled: set[tuple[str, int]] = set()
        """Versions whose rollups are complete (they stay so: only backfill rewrites them)."""
        self._unrolled_checked: dict[tuple[str, int], float] = {}

    def spec(self, view: m.FeatureView, join_keys: tuple[str, ...]) -> StreamViewSpec:
        """The spec of a cached definition (a refreshed cache brings new objects)."""
        cached = self._specs.get((view.name, view.version))
        if cached is None or cached[0] is not view:
            cached = (view, spec_of(view, join_keys))
            self._specs[(view.name, view.version)] = cached
        return cached[1]

    async def read(self, wanted: Sequence[tuple[StreamViewSpec, str]], now: datetime) -> ViewTables:
        """Rows of (spec, entity key) pairs at ``now``; entities with no event are left out."""
        if not wanted:
            return {}
        read_us = to_us(now)
        specs = {(s.view, s.version): s for s, _ in wanted}
        rolled = await self._rolled_up([view for view, spec in specs.items() if spec.rolls_up])
        tile_ranges: list[tiles.Range] = []
        rollup_ranges: list[tiles.Range] = []
        newest_ranges: list[tiles.NewestRange] = []
        for spec, key in dict.fromkeys(wanted):
            use_rollups = (spec.view, spec.version) in rolled
            tile_spans, rollup_spans = read_spans(spec, read_us, use_rollups)
            if spec.newest_tiles:
                newest_ranges.extend(
                    (spec.view, spec.version, key, *span, spec.newest_tiles) for span in tile_spans
                )
                continue
            tile_ranges.extend((spec.view, spec.version, key, *span) for span in tile_spans)
            rollup_ranges.extend((spec.view, spec.version, key, *span) for span in rollup_spans)
        lifetime_refs = [
            (spec.view, spec.version, key, floor_tile(read_us, spec.tile_us))
            for spec, key in dict.fromkeys(wanted)
            if spec.lifetime
        ]
        windows = tiles.read_windows(self._pool, tile_ranges, rollup_ranges, newest_ranges)
        if lifetime_refs:
            found, whole = await asyncio.gather(
                windows, tiles.read_lifetimes(self._pool, lifetime_refs)
            )
        else:
            found, whole = await windows, []
        by_entity: dict[ViewKey, list[tuple[int, TileState]]] = defaultdict(list)
        for (view, version, key, start), state in found:
            by_entity[(view, version, key)].append((start, decode_state(state)))
        lifetimes: dict[ViewKey, TileState] = {}
        for ref, state in whole:
            merged = lifetimes.setdefault(ref, TileState())
            merged.merge(decode_state(state))
            by_entity.setdefault(ref, [])
        newest = {(view, version, key): limit for view, version, key, *_, limit in newest_ranges}
        rows: ViewTables = {view: {} for view in specs}
        short: list[ViewKey] = []
        for ref, entity_tiles in by_entity.items():
            spec = specs[(ref[0], ref[1])]
            lifetime = lifetimes.get(ref, TileState()) if spec.lifetime else None
            result = combine(spec, entity_tiles, read_us, lifetime)
            limit = newest.get(ref)
            if (
                limit is not None
                and len(entity_tiles) >= limit
                and not holds_every_newest(spec, result)
            ):
                short.append(ref)  # its newest tiles' events lacked some LAST_N's columns
                continue
            _serve(rows, spec, ref, result)
        if short:
            # Rare, and exact: the whole window of the entities whose n newest tiles held
            # fewer than n events of some LAST_N.
            wanted_again = set(short)
            ranges = [r[:5] for r in newest_ranges if r[:3] in wanted_again]
            again: dict[ViewKey, list[tuple[int, TileState]]] = defaultdict(list)
            for (view, version, key, start), state in await tiles.read_windows(self._pool, ranges):
                again[(view, version, key)].append((start, decode_state(state)))
            for ref in short:
                spec = specs[(ref[0], ref[1])]
                lifetime = lifetimes.get(ref, TileState()) if spec.lifetime else None
                _serve(rows, spec, ref, combine(spec, again[ref], read_us, lifetime))
        return rows

    async def _rolled_up(self, views: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of ``views`` read rollups. A version not complete is asked about again at
        most every ``_RECHECK_S`` (a backfill completes it)."""
        now = time.monotonic()
        unknown = [
            view
            for view in views
            if view not in self._rolled
            and now - self._unrolled_checked.get(view, now - _RECHECK_S) >= _RECHECK_S
        ]
        if unknown:
            complete = await tiles.rollups_complete(self._pool, unknown)
            self._rolled |= complete
            for view in unknown:
                if view not in complete:
                    self._unrolled_checked[view] = now
        return self._rolled


def _serve(rows: ViewTables, spec: StreamViewSpec, ref: ViewKey, result: WindowValues) -> None:
    """Add an entity's values to ``rows`` (left out when no event is in any window)."""
    if result.latest_us is None:
        return
    row = result.feature_row(spec)
    rows[(ref[0], ref[1])][ref[2]] = ServingRow(
        row.SerializeToString(), from_us(result.latest_us), len(result.values)
    )
