"""Streaming aggregations as time tiles: the pure logic ingestion, backfill and reads share.

A stream view folds its events into partial aggregates per (entity, tile), a tile being
``[tile_start, tile_start + tile_size)`` of event time with ``tile_start = floor(event_time,
tile_size)``. A window W read at time t combines the tiles whose start lies in
``[floor(t) - W + tile_size, floor(t)]``: values are relative to the time they are read
(an event leaves a window when the clock moves on, whether or not anything arrives), and a
window's precision is one tile (it reaches back between W - tile_size and W).

The merge is exact, commutative and associative, so any arrival order, any redelivery
order and any batching give *identical* values, not merely close ones: counts are ints;
sums are exact decimals (each number enters as ``Decimal(repr(float))``, added in a
context wide enough to never round); min and max are comparisons; ``last`` is the value of
the event with the greatest (event_time, arrival_time, stream_sequence). Floats appear
only when a window is read, each correctly rounded from the exact value (``exact_ratio``).
See docs/adr/0007-streaming-aggregations.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, Inexact, Overflow

from lathe.feature_store.v1 import message_pb2 as m

COUNT, SUM, MEAN, MIN, MAX, LAST = "count", "sum", "mean", "min", "max", "last"
FUNCTIONS = {
    m.AGGREGATION_FUNCTION_COUNT: COUNT,
    m.AGGREGATION_FUNCTION_SUM: SUM,
    m.AGGREGATION_FUNCTION_MEAN: MEAN,
    m.AGGREGATION_FUNCTION_MIN: MIN,
    m.AGGREGATION_FUNCTION_MAX: MAX,
    m.AGGREGATION_FUNCTION_LAST: LAST,
}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# Values are Decimal(repr(float)): at most 17 digits, exponents within a double's range, so
# any sum of them spans well under 1000 digits. Inexact is trapped: a rounded sum would make
# the result depend on the order of additions, and that must fail loudly, never silently.
EXACT = Context(prec=1000, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, Overflow])
ZERO = Decimal(0)

OrderKey = tuple[int, int, int]
"""(event time µs, arrival time µs, stream sequence): which event is the last one."""


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly."""
    return (moment - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def duration_us(duration: object) -> int:
    """Microseconds of a protobuf Duration."""
    return duration.seconds * 1_000_000 + duration.nanos // 1000  # type: ignore[attr-defined]


def floor_tile(us: int, tile_us: int) -> int:
    """The start of the tile holding ``us`` (floor, also for times before the epoch)."""
    return us - us % tile_us


def window_start(read_us: int, window_us: int, tile_us: int) -> int:
    """The first tile start a window read at ``read_us`` covers (the last is floor(read))."""
    return floor_tile(read_us, tile_us) - window_us + tile_us


ROLLUP_TILES = 60
"""Tiles per rollup: one hour of one-minute tiles."""
ROLLUP_MIN_WINDOW_TILES = 240
"""Views whose largest window holds no more tiles than this (4 hours of one-minute
tiles, ~2.5 ms to read) keep no rollups. Changing it (or ROLLUP_TILES) changes which
existing versions have rollups: clear ``stream_rollups_complete`` in the same landing
(a migration), so those versions read tiles until backfilled."""

Span = tuple[int, int]
"""First and last start (µs), both inclusive."""


def band_starts(spec: StreamViewSpec, read_us: int) -> list[int]:
    """The first tile of each window read at ``read_us``, smallest window first (so the
    starts descend): band k holds the tiles from ``starts[k]`` up to the next band."""
    windows = sorted({a.window_us for a in spec.aggregations})
    return [window_start(read_us, w, spec.tile_us) for w in windows]


def read_spans(spec: StreamViewSpec, read_us: int, rollups: bool) -> tuple[list[Span], list[Span]]:
    """What a read at ``read_us`` fetches: tile spans and rollup spans that together
    cover the largest window exactly once.

    ``combine`` assigns each tile to the band of the smallest window holding it, by its
    start; a rollup is only used where it lies wholly inside one band, so assigning it by
    its start is exact. Without ``rollups``, one tile span.
    """
    tile, last = spec.tile_us, floor_tile(read_us, spec.tile_us)
    firsts = band_starts(spec, read_us)
    if not rollups:
        return [(firsts[-1], last)], []
    size = spec.rollup_us
    tile_spans, rollup_spans = [], []
    ends = [last, *(first - tile for first in firsts[:-1])]  # each band's last tile
    for first, end in zip(firsts, ends, strict=True):
        whole_from = -(-first // size) * size  # the first rollup starting in the band
        whole_to = floor_tile(end + tile, size)  # the end of the last rollup ending in it
        if whole_to - whole_from < size:
            tile_spans.append((first, end))
            continue
        rollup_spans.append((whole_from, whole_to - size))
        if first < whole_from:
            tile_spans.append((first, whole_from - tile))
        if whole_to <= end:
            tile_spans.append((whole_to, end))
    return tile_spans, rollup_spans


@dataclass(frozen=True)
class WindowAggregation:
    """One feature of a stream view: ``function(column)`` over the last ``window_us``."""

    name: str
    function: str
    """count, sum, mean, min, max or last."""
    column: str
    """The aggregated event field; empty for count (which counts events)."""
    window_us: int


@dataclass(frozen=True)
class StreamViewSpec:
    """What ingestion, backfill and reads need of one stream view version."""

    view: str
    version: int
    source: str
    """The <source> of the subject <namespace>.ingest.<source>."""
    entity_field: str
    event_time_field: str
    tile_us: int
    lateness_us: int
    """Events whose arrival is further than this from their event time are rejected."""
    aggregations: tuple[WindowAggregation, ...]
    ttl_us: int = 0
    """0: never expire (applied to the latest event time, as for stored views)."""

    @property
    def columns(self) -> tuple[str, ...]:
        """Event fields some aggregation reads, each once, in first-use order."""
        return tuple(dict.fromkeys(a.column for a in self.aggregations if a.function != COUNT))

    @property
    def max_window_us(self) -> int:
        return max(a.window_us for a in self.aggregations)

    @property
    def rollup_us(self) -> int:
        """The span of a rollup (ADR 0011)."""
        return self.tile_us * ROLLUP_TILES

    @property
    def rolls_up(self) -> bool:
        """Whether ingestion and backfill keep rollups: only where a window is long enough
        for them to pay for their writes (about a third of the ingest rate)."""
        return self.max_window_us > ROLLUP_MIN_WINDOW_TILES * self.tile_us


def spec_of(view: m.FeatureView, join_key: str) -> StreamViewSpec:
    """The spec of a validated stream view (its rules: domain/definitions/rules.py)."""
    stream = view.stream_source
    return StreamViewSpec(
        view=view.name,
        version=view.version,
        source=stream.source,
        entity_field=stream.entity_field or join_key,
        event_time_field=stream.event_time_field,
        tile_us=duration_us(view.tile_size),
        lateness_us=duration_us(view.allowed_lateness),
        aggregations=tuple(
            WindowAggregation(
                name=a.name,
                function=FUNCTIONS[a.function],
                column="" if a.function == m.AGGREGATION_FUNCTION_COUNT else a.column,
                window_us=duration_us(a.window),
            )
            for a in view.aggregations
        ),
        ttl_us=duration_us(view.ttl),
    )


@dataclass(frozen=True)
class StreamEvent:
    """One accepted event as one view reads it (see events.py for parsing)."""

    entity_key: str
    event_us: int
    arrival_us: int
    """When JetStream stored it (its known-at time)."""
    sequence: int
    """JetStream stream sequence: the last tie-break of ``last``."""
    values: dict[str, Decimal]
    """The view's columns present in the event (absent or null ones are left out)."""

    @property
    def order_key(self) -> OrderKey:
        return self.event_us, self.arrival_us, self.sequence


@dataclass
class ColumnPartial:
    """Partial aggregates of one column over the events of one tile (or of several)."""

    count: int = 0
    total: Decimal = ZERO
    low: Decimal | None = None
    high: Decimal | None = None
    last: Decimal | None = None
    last_key: OrderKey | None = None

    def add(self, value: Decimal, key: OrderKey) -> None:
        self.count += 1
        self.total = EXACT.add(self.total, value)
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)
        if self.last_key is None or key > self.last_key:
            self.last, self.last_key = value, key

    def merge(self, other: ColumnPartial) -> None:
        if not other.count:
            return
        self.count += other.count
        self.total = EXACT.add(self.total, other.total)
        assert other.low is not None and other.high is not None and other.last_key is not None
        self.low = other.low if self.low is None else min(self.low, other.low)
        self.high = other.high if self.high is None else max(self.high, other.high)
        if self.last_key is None or other.last_key > self.last_key:
            self.last, self.last_key = other.last, other.last_key


@dataclass
class TileState:
    """Everything a view needs to know of the events in one tile of one entity."""

    count: int = 0
    """Events (what COUNT counts)."""
    latest_us: int | None = None
    """The greatest event time: the event time a read reports."""
    columns: dict[str, ColumnPartial] = field(default_factory=dict)

    def add(self, event: StreamEvent) -> None:
        """Merge one event in."""
        self.count += 1
        if self.latest_us is None or event.event_us > self.latest_us:
            self.latest_us = event.event_us
        for column, value in event.values.items():
            self.columns.setdefault(column, ColumnPartial()).add(value, event.order_key)

    def merge(self, other: TileState) -> None:
        """Merge another tile's partials in (combining tiles into a window)."""
        self.count += other.count
        if other.latest_us is not None and (
            self.latest_us is None or other.latest_us > self.latest_us
        ):
            self.latest_us = other.latest_us
        for column, partial in other.columns.items():
            self.columns.setdefault(column, ColumnPartial()).merge(partial)


TileKey = tuple[str, int]
"""(entity key, tile start µs)."""


def tile_key(spec: StreamViewSpec, event: StreamEvent) -> TileKey:
    return event.entity_key, floor_tile(event.event_us, spec.tile_us)


def build_tiles(spec: StreamViewSpec, events: Iterable[StreamEvent]) -> dict[TileKey, TileState]:
    """Tiles of accepted events in batch (backfill): the same merge as streaming."""
    tiles: dict[TileKey, TileState] = {}
    for event in events:
        tiles.setdefault(tile_key(spec, event), TileState()).add(event)
    return tiles


def rollup_key(spec: StreamViewSpec, key: TileKey) -> TileKey:
    """The rollup a tile belongs to."""
    return key[0], floor_tile(key[1], spec.rollup_us)


def build_rollups(
    spec: StreamViewSpec, built: dict[TileKey, TileState]
) -> dict[TileKey, TileState]:
    """Rollups of tiles (backfill): the merge reads use, so a rollup equals its tiles."""
    rollups: dict[TileKey, TileState] = {}
    for key, state in built.items():
        rollups.setdefault(rollup_key(spec, key), TileState()).merge(state)
    return rollups


def exact_ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator correctly rounded to a float (±inf beyond the float range).

    Python's int true division rounds correctly, so every path that reaches the same
    rational (a Decimal sum here, scaled integers in as_of.py) gets the same float.
    """
    try:
        return numerator / denominator
    except OverflowError:
        return float("inf") if (numerator < 0) == (denominator < 0) else float("-inf")


def _float(value: Decimal) -> float:
    return exact_ratio(*value.as_integer_ratio())


@dataclass(frozen=True)
class WindowValues:
    """A view's feature values for one entity read at one time."""

    values: tuple[int | float | None, ...]
    """In aggregation (= feature) order: int for count, float otherwise, None when empty."""
    latest_us: int | None
    """Greatest event time in the largest window; None: no event in any window."""

    def feature_row(self) -> m.FeatureRow:
        """The values as a stored view's row (what online reads serve)."""
        return m.FeatureRow(values=[_typed(value) for value in self.values])


def _typed(value: int | float | None) -> m.Value:
    if value is None:
        return m.Value()
    if isinstance(value, int):
        return m.Value(int64_value=value)
    return m.Value(float64_value=value)


def value_of(aggregation: WindowAggregation, state: TileState) -> int | float | None:
    """One aggregation's value over the merged tiles of its window.

    Empty windows: count and sum are 0; mean, min, max and last are None (no value).
    """
    if aggregation.function == COUNT:
        return state.count
    partial = state.columns.get(aggregation.column)
    if aggregation.function == SUM:
        return _float(partial.total) if partial else 0.0
    if partial is None or not partial.count:
        return None
    assert partial.low is not None and partial.high is not None and partial.last is not None
    if aggregation.function == MEAN:
        numerator, denominator = partial.total.as_integer_ratio()
        return exact_ratio(numerator, denominator * partial.count)
    if aggregation.function == MIN:
        return _float(partial.low)
    if aggregation.function == MAX:
        return _float(partial.high)
    return _float(partial.last)


def combine(
    spec: StreamViewSpec, tiles: Iterable[tuple[int, TileState]], read_us: int
) -> WindowValues:
    """Every aggregation of one entity at ``read_us`` from its tiles (start µs, state).

    Tiles outside the largest window are ignored, so callers may pass more. Windows share
    their end, so each tile is merged once, into the band of the smallest window holding
    it; each window is then its band plus the smaller windows' (merges are exact, so the
    grouping cannot change a value).
    """
    last_start = floor_tile(read_us, spec.tile_us)
    windows = sorted({a.window_us for a in spec.aggregations})
    firsts = band_starts(spec, read_us)
    bands = [TileState() for _ in windows]
    for start, state in tiles:
        if start > last_start or start < firsts[-1]:
            continue
        band = 0
        while start < firsts[band]:
            band += 1
        bands[band].merge(state)
    merged: dict[int, TileState] = {}
    running = TileState()
    for window, band_state in zip(windows, bands, strict=True):
        widened = TileState()
        widened.merge(running)
        widened.merge(band_state)
        merged[window] = running = widened
    if running.latest_us is None:
        return WindowValues(tuple(None for _ in spec.aggregations), None)
    return WindowValues(
        tuple(value_of(a, merged[a.window_us]) for a in spec.aggregations), running.latest_us
    )


# -- (de)serialization: tiles are stored as compact JSON; decimals as exact strings ---------


def encode_state(state: TileState) -> str:
    columns = {
        name: [
            p.count,
            str(p.total),
            str(p.low),
            str(p.high),
            str(p.last),
            *(p.last_key or ()),
        ]
        for name, p in state.columns.items()
        if p.count
    }
    return json.dumps({"n": state.count, "t": state.latest_us, "c": columns}, separators=(",", ":"))


def decode_state(text: str) -> TileState:
    raw = json.loads(text)
    state = TileState(count=raw["n"], latest_us=raw["t"])
    for name, (count, total, low, high, last, event_us, arrival_us, sequence) in raw["c"].items():
        state.columns[name] = ColumnPartial(
            count=count,
            total=Decimal(total),
            low=Decimal(low),
            high=Decimal(high),
            last=Decimal(last),
            last_key=(event_us, arrival_us, sequence),
        )
    return state


EMPTY_STATE = encode_state(TileState())
