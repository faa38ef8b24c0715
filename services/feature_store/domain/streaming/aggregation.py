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

Later aggregations keep their partials as *parts* beside the columns' (ADR 0022): exact
moments for STDDEV / VARIANCE (moments.py), distinct sets and sketches for COUNT_DISTINCT
and quantile states for PERCENTILE (sketches.py). Each is a function of the multiset of
values it holds, so the guarantee above holds for them too. A window may end before the
read time (``offset``) or have no start (``lifetime``: every event up to the read time,
read from one running state per entity instead of tiles).

Sequence aggregations (FIRST, LAST_N, FIRST_N, ADR 0021) keep the n latest or earliest
events of a window with their values (sequences.py), a part like the others; their
features are list values served oldest first, one per column with ``columns``, plus
``<name>__event_time`` (epoch seconds).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, Inexact, Overflow
from functools import cached_property
from itertools import pairwise

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.streaming.moments import (
    Moments,
    spread,
    variance_ratio,
)
from services.feature_store.domain.streaming.sequences import (
    EARLIEST,
    LATEST,
    ORDER_KEY,
    EventSequence,
    sequence_key,
)
from services.feature_store.domain.streaming.sketches import Distinct, Quantiles
from services.feature_store.domain.values import LIST_OF, list_value

COUNT, SUM, MEAN, MIN, MAX, LAST = "count", "sum", "mean", "min", "max", "last"
STDDEV, VARIANCE, STDDEV_POP, VARIANCE_POP = "stddev", "variance", "stddev_pop", "variance_pop"
COUNT_DISTINCT, PERCENTILE = "count_distinct", "percentile"
FIRST, LAST_N, FIRST_N = "first", "last_n", "first_n"
FUNCTIONS = {
    m.AGGREGATION_FUNCTION_COUNT: COUNT,
    m.AGGREGATION_FUNCTION_SUM: SUM,
    m.AGGREGATION_FUNCTION_MEAN: MEAN,
    m.AGGREGATION_FUNCTION_MIN: MIN,
    m.AGGREGATION_FUNCTION_MAX: MAX,
    m.AGGREGATION_FUNCTION_LAST: LAST,
    m.AGGREGATION_FUNCTION_STDDEV: STDDEV,
    m.AGGREGATION_FUNCTION_VARIANCE: VARIANCE,
    m.AGGREGATION_FUNCTION_STDDEV_POP: STDDEV_POP,
    m.AGGREGATION_FUNCTION_VARIANCE_POP: VARIANCE_POP,
    m.AGGREGATION_FUNCTION_COUNT_DISTINCT: COUNT_DISTINCT,
    m.AGGREGATION_FUNCTION_PERCENTILE: PERCENTILE,
    m.AGGREGATION_FUNCTION_FIRST: FIRST,
    m.AGGREGATION_FUNCTION_LAST_N: LAST_N,
    m.AGGREGATION_FUNCTION_FIRST_N: FIRST_N,
}
INTEGER_FUNCTIONS = frozenset({COUNT, COUNT_DISTINCT})
"""Functions whose feature is INT64 (the others are FLOAT64)."""
_MOMENT_FUNCTIONS = frozenset({STDDEV, VARIANCE, STDDEV_POP, VARIANCE_POP})
SEQUENCE_FUNCTIONS = frozenset({FIRST, LAST_N, FIRST_N})
"""Functions keeping events in order (ADR 0021): any column type, no column partials."""
EVENT_TIME_OUTPUT = -1
"""``WindowAggregation.output`` of a sequence's ``<name>__event_time`` feature."""
MAX_SEQUENCE = 1000
"""The largest n of LAST_N / FIRST_N."""

# Parts: partial states beside the columns', keyed "<kind>:<column>" (ADR 0022).
MOMENTS, DISTINCT, QUANTILES = "m", "d", "q"
_PART_KINDS = {
    **{f: MOMENTS for f in _MOMENT_FUNCTIONS},
    COUNT_DISTINCT: DISTINCT,
    PERCENTILE: QUANTILES,
}
Part = Moments | Distinct | Quantiles | EventSequence
_PART_TYPES: dict[str, type[Moments | Distinct | Quantiles]] = {
    MOMENTS: Moments,
    DISTINCT: Distinct,
    QUANTILES: Quantiles,
}
SEQUENCE_KINDS = frozenset({LATEST, EARLIEST})


def part_key(function: str, column: str) -> str | None:
    """The part an aggregation reads ("m:amount"), None for the columns' partials."""
    kind = _PART_KINDS.get(function)
    return None if kind is None else f"{kind}:{column}"


def new_part(key: str) -> Part:
    kind = key.split(":", 1)[0]
    if kind in SEQUENCE_KINDS:
        return EventSequence.of_key(key)
    return _PART_TYPES[kind]()


def decode_part(key: str, raw: object) -> Part:
    kind = key.split(":", 1)[0]
    if kind in SEQUENCE_KINDS:
        return EventSequence.decode(key, raw)  # type: ignore[arg-type]
    return _PART_TYPES[kind].decode(raw)  # type: ignore[arg-type]


def aggregation_features(aggregation: m.Aggregation) -> list[tuple[str, int]]:
    """The features (name, type) one aggregation of a stream view gives, in order.

    COUNT / COUNT_DISTINCT: INT64; FIRST: its ``value_type``; LAST_N / FIRST_N over
    ``column``: a list of its ``value_type``; over ``columns``: ``<name>__<column>`` lists
    of each column's type, then ``<name>__event_time`` (FLOAT64_LIST, epoch seconds);
    the others FLOAT64.
    """
    function = aggregation.function
    if function in (m.AGGREGATION_FUNCTION_COUNT, m.AGGREGATION_FUNCTION_COUNT_DISTINCT):
        return [(aggregation.name, m.VALUE_TYPE_INT64)]
    element = aggregation.value_type or m.VALUE_TYPE_FLOAT64
    if function == m.AGGREGATION_FUNCTION_FIRST:
        return [(aggregation.name, element)]
    if function in (m.AGGREGATION_FUNCTION_LAST_N, m.AGGREGATION_FUNCTION_FIRST_N):
        if not aggregation.columns:
            return [(aggregation.name, LIST_OF[element])]
        types = list(aggregation.column_types) or [m.VALUE_TYPE_FLOAT64] * len(aggregation.columns)
        return [
            *(
                (f"{aggregation.name}__{column}", LIST_OF[kind])
                for column, kind in zip(aggregation.columns, types, strict=True)
            ),
            (f"{aggregation.name}__event_time", m.VALUE_TYPE_FLOAT64_LIST),
        ]
    return [(aggregation.name, m.VALUE_TYPE_FLOAT64)]


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
WindowKey = tuple[int, int]
"""(window µs, offset µs) of a windowed aggregation."""


def window_span(read_us: int, window: WindowKey, tile_us: int) -> Span:
    """The tile starts a window read at ``read_us`` covers: it ends ``offset`` before the
    read's tile and reaches back ``window``."""
    last = floor_tile(read_us, tile_us) - window[1]
    return last - window[0] + tile_us, last


def segments(spec: StreamViewSpec, read_us: int) -> tuple[list[int], list[Span]]:
    """The windows read at ``read_us`` cut into disjoint segments: (cuts, covered).

    ``cuts`` ascend; segment i holds the tile starts in ``[cuts[i], cuts[i + 1])``, and
    every window is a run of whole segments. ``covered`` lists the segments some window
    holds (a gap between an offset window and a later one is read by none). Windows
    sharing their end (no offsets) give one segment per window: the tiles of the smallest
    window, then those the next adds, and so on.
    """
    tile = spec.tile_us
    spans = [window_span(read_us, w, tile) for w in spec.windows]
    cuts = sorted({edge for first, last in spans for edge in (first, last + tile)})
    covered = [
        (low, high - tile)
        for low, high in pairwise(cuts)
        if any(first <= low and high - tile <= last for first, last in spans)
    ]
    return cuts, covered


def read_spans(spec: StreamViewSpec, read_us: int, rollups: bool) -> tuple[list[Span], list[Span]]:
    """What a read at ``read_us`` fetches: tile spans and rollup spans that together
    cover every window exactly once (lifetime aggregations read their own state).

    ``combine`` assigns each tile to its segment by its start; a rollup is only used
    where it lies wholly inside one segment, so assigning it by its start is exact.
    Without ``rollups``, the segments' tiles.
    """
    if not spec.windows:
        return [], []
    tile = spec.tile_us
    covered = segments(spec, read_us)[1]
    if not rollups:
        return _merged(covered, tile), []
    size = spec.rollup_us
    tile_spans, rollup_spans = [], []
    for first, end in covered:
        whole_from = -(-first // size) * size  # the first rollup starting in the segment
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


def _merged(spans: list[Span], tile: int) -> list[Span]:
    """Adjacent spans as one (fewer ranges to fetch)."""
    out: list[Span] = []
    for first, last in spans:
        if out and out[-1][1] + tile == first:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


@dataclass(frozen=True)
class WindowAggregation:
    """One feature of a stream view: ``function(column)`` over the last ``window_us``."""

    name: str
    function: str
    """count, sum, mean, min, max, last, stddev, variance, stddev_pop, variance_pop,
    count_distinct or percentile."""
    column: str
    """The aggregated event field; empty for count (which counts events)."""
    window_us: int
    """0 for a lifetime aggregation."""
    percentile: float = 0.0
    """PERCENTILE: which one, 0-100."""
    offset_us: int = 0
    """The window ends this long before the read time."""
    lifetime: bool = False
    """No start: every event up to the read time (read from the lifetime state)."""
    value_type: int = m.VALUE_TYPE_UNSPECIFIED
    """The feature's ValueType (unset: INT64 for count and count_distinct, else FLOAT64)."""
    n: int = 0
    """Sequences: how many events (1 for FIRST)."""
    columns: tuple[str, ...] = ()
    """Sequences: the event fields kept (parallel lists)."""
    column_types: tuple[int, ...] = ()
    """Sequences: each column's element ValueType."""
    output: int = 0
    """Sequences: which column this feature is (``EVENT_TIME_OUTPUT``: the event times)."""

    def __post_init__(self) -> None:
        if not self.value_type:
            integer = self.function in INTEGER_FUNCTIONS
            kind = m.VALUE_TYPE_INT64 if integer else m.VALUE_TYPE_FLOAT64
            object.__setattr__(self, "value_type", kind)

    @property
    def window(self) -> WindowKey:
        return self.window_us, self.offset_us

    @cached_property
    def part(self) -> str | None:
        """The part of a state it reads (None: the column partials); computed once (ingest
        asks for it per event)."""
        if self.function in SEQUENCE_FUNCTIONS:
            return sequence_key(self.function == LAST_N, self.n, self.columns, self.column_types)
        return part_key(self.function, self.column)


@dataclass(frozen=True)
class StreamViewSpec:
    """What ingestion, backfill and reads need of one stream view version."""

    view: str
    version: int
    source: str
    """The <source> of the subject <namespace>.ingest.<source>."""
    entity_field: str
    """The event field holding the entity key (the first part's, for a composite key)."""
    event_time_field: str
    tile_us: int
    lateness_us: int
    """Events whose arrival is further than this from their event time are rejected."""
    aggregations: tuple[WindowAggregation, ...]
    ttl_us: int = 0
    """0: never expire (applied to the latest event time, as for stored views)."""
    entity_fields: tuple[str, ...] = ()
    """A composite key's fields, one per join key in order (ADR 0023); empty: the one
    ``entity_field``."""

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """Numeric event fields some aggregation reads, each once, in first-use order.
        (This and the other cached properties are asked for per event; a copy with other
        fields is ``dataclasses.replace(spec, ...)``, which recomputes them.)"""
        return tuple(
            dict.fromkeys(
                a.column
                for a in self.aggregations
                if a.function not in (COUNT, COUNT_DISTINCT)
                and a.function not in SEQUENCE_FUNCTIONS
            )
        )

    @cached_property
    def sequences(self) -> tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]:
        """Sequence parts, each once: (part key, columns, element types)."""
        return tuple(
            dict.fromkeys(
                (a.part, a.columns, a.column_types)  # type: ignore[misc]
                for a in self.aggregations
                if a.function in SEQUENCE_FUNCTIONS
            )
        )

    @cached_property
    def distinct_columns(self) -> tuple[str, ...]:
        """Event fields COUNT_DISTINCT reads (any scalar), each once."""
        return tuple(
            dict.fromkeys(a.column for a in self.aggregations if a.function == COUNT_DISTINCT)
        )

    @cached_property
    def parts(self) -> tuple[str, ...]:
        """The parts (beside the column partials) its states keep, each once."""
        return tuple(dict.fromkeys(a.part for a in self.aggregations if a.part is not None))

    @cached_property
    def windows(self) -> tuple[WindowKey, ...]:
        """Its distinct (window, offset) pairs, lifetime aggregations left out."""
        return tuple(sorted({a.window for a in self.aggregations if not a.lifetime}))

    @cached_property
    def lifetime(self) -> bool:
        """Whether some aggregation has no start (ingestion keeps a lifetime state)."""
        return any(a.lifetime for a in self.aggregations)

    @cached_property
    def max_window_us(self) -> int:
        """How far back before the read's tile its windows reach (window + offset; 0 when
        every aggregation is lifetime): what reads fetch and pruning keeps."""
        return max((w + o for w, o in self.windows), default=0)

    @property
    def rollup_us(self) -> int:
        """The span of a rollup (ADR 0011)."""
        return self.tile_us * ROLLUP_TILES

    @cached_property
    def newest_tiles(self) -> int:
        """For a view whose windowed aggregations are all LAST_N over windows that end at
        the read time: the largest n, else 0. Such a view's answer lies in the newest
        tiles of its window (every older tile's events are older than theirs), so its
        reads fetch those first (``WindowReader``) and it needs no rollups."""
        windowed = [a for a in self.aggregations if not a.lifetime]
        if not windowed or any(a.function != LAST_N or a.offset_us for a in windowed):
            return 0
        return max(a.n for a in windowed)

    @cached_property
    def rolls_up(self) -> bool:
        """Whether ingestion and backfill keep rollups: only where a window is long enough
        for them to pay for their writes (about a third of the ingest rate), and never for
        views read newest tiles first (``newest_tiles``)."""
        if self.newest_tiles:
            return False
        return self.max_window_us > ROLLUP_MIN_WINDOW_TILES * self.tile_us


def spec_of(view: m.FeatureView, join_keys: str | Sequence[str]) -> StreamViewSpec:
    """The spec of a validated stream view (its rules: domain/definitions/rules.py);
    ``join_keys``: its entity's join key, or keys (``keys.join_keys_of``)."""
    stream = view.stream_source
    keys = (join_keys,) if isinstance(join_keys, str) else tuple(join_keys)
    fields = tuple(stream.entity_fields) or (
        (stream.entity_field,) if stream.entity_field else keys
    )
    return StreamViewSpec(
        view=view.name,
        version=view.version,
        source=stream.source,
        entity_field=fields[0],
        entity_fields=fields if len(fields) > 1 else (),
        event_time_field=stream.event_time_field,
        tile_us=duration_us(view.tile_size),
        lateness_us=duration_us(view.allowed_lateness),
        aggregations=tuple(
            window_aggregation
            for a in view.aggregations
            for window_aggregation in _window_aggregations(a)
        ),
        ttl_us=duration_us(view.ttl),
    )


def _window_aggregations(a: m.Aggregation) -> list[WindowAggregation]:
    """One per feature of the aggregation (several for a sequence over ``columns``)."""
    function = FUNCTIONS[a.function]
    common = {
        "function": function,
        "column": "" if a.function == m.AGGREGATION_FUNCTION_COUNT else a.column,
        "window_us": 0 if a.lifetime else duration_us(a.window),
        "percentile": a.percentile,
        "offset_us": 0 if a.lifetime else duration_us(a.offset),
        "lifetime": a.lifetime,
    }
    features = aggregation_features(a)
    if function not in SEQUENCE_FUNCTIONS:
        ((name, value_type),) = features
        return [WindowAggregation(name=name, value_type=value_type, **common)]  # type: ignore[arg-type]
    if a.columns:
        columns = tuple(a.columns)
        types = tuple(a.column_types) or (m.VALUE_TYPE_FLOAT64,) * len(columns)
    else:
        columns, types = (a.column,), (a.value_type or m.VALUE_TYPE_FLOAT64,)
    outputs = [*range(len(columns)), EVENT_TIME_OUTPUT] if a.columns else [0]
    return [
        WindowAggregation(
            name=name,
            value_type=value_type,
            n=1 if function == FIRST else a.n,
            columns=columns,
            column_types=types,
            output=output,
            **common,  # type: ignore[arg-type]
        )
        for (name, value_type), output in zip(features, outputs, strict=True)
    ]


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
    parts: dict[str, object] = field(default_factory=dict)
    """What the event adds to each part (``StreamViewSpec.parts``) it has a value for:
    a Decimal (moments), a float (quantiles) or a 64-bit hash (distinct)."""

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
    parts: dict[str, Part] = field(default_factory=dict)
    """"<kind>:<column>" -> moments, distinct values or quantiles (ADR 0022)."""

    def add(self, event: StreamEvent) -> None:
        """Merge one event in."""
        self.count += 1
        if self.latest_us is None or event.event_us > self.latest_us:
            self.latest_us = event.event_us
        for column, value in event.values.items():
            self.columns.setdefault(column, ColumnPartial()).add(value, event.order_key)
        for key, part_value in event.parts.items():
            part = self.parts.get(key)
            if part is None:
                part = self.parts[key] = new_part(key)
            part.add(part_value)  # type: ignore[arg-type]

    def merge(self, other: TileState) -> None:
        """Merge another tile's partials in (combining tiles into a window)."""
        self.count += other.count
        if other.latest_us is not None and (
            self.latest_us is None or other.latest_us > self.latest_us
        ):
            self.latest_us = other.latest_us
        for column, partial in other.columns.items():
            self.columns.setdefault(column, ColumnPartial()).merge(partial)
        for key, other_part in other.parts.items():
            part = self.parts.get(key)
            if part is None:
                part = self.parts[key] = new_part(key)
            part.merge(other_part)  # type: ignore[arg-type]


TileKey = tuple[str, int]
"""(entity key, tile start µs)."""


def tile_key(spec: StreamViewSpec, event: StreamEvent) -> TileKey:
    return event.entity_key, floor_tile(event.event_us, spec.tile_us)


def settled(spec: StreamViewSpec, event: StreamEvent) -> bool:
    """Whether the event's tile had started when it arrived: then every read from its
    processing on includes it, and it goes straight into its entity's lifetime state;
    otherwise (dated ahead, within the lateness) it waits in a pending row of its tile
    until that tile starts (ADR 0022)."""
    return floor_tile(event.event_us, spec.tile_us) <= floor_tile(event.arrival_us, spec.tile_us)


def build_lifetimes(
    spec: StreamViewSpec, events: Iterable[StreamEvent]
) -> tuple[dict[str, TileState], dict[TileKey, TileState]]:
    """Lifetime states by entity and pending states by tile (backfill): what ingestion
    writes for the same events, before any pending row is folded."""
    lifetimes: dict[str, TileState] = {}
    pending: dict[TileKey, TileState] = {}
    for event in events:
        if settled(spec, event):
            lifetimes.setdefault(event.entity_key, TileState()).add(event)
        else:
            pending.setdefault(tile_key(spec, event), TileState()).add(event)
    return lifetimes, pending


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

    values: tuple[object, ...]
    """In aggregation (= feature) order: int for count and count_distinct, a list for
    LAST_N / FIRST_N (oldest first), the column's type for FIRST, float otherwise, None
    when empty."""
    latest_us: int | None
    """Greatest event time in the largest window; None: no event in any window."""

    def feature_row(self, spec: StreamViewSpec) -> m.FeatureRow:
        """The values as a stored view's row (what online reads serve)."""
        return m.FeatureRow(
            values=[
                _typed(value, a.value_type)
                for value, a in zip(self.values, spec.aggregations, strict=True)
            ]
        )


def holds_every_newest(spec: StreamViewSpec, values: WindowValues) -> bool:
    """Whether a read of ``spec``'s newest tiles only (``newest_tiles``) is its whole
    answer: every LAST_N holds its n events, so no older tile can change it."""
    return all(
        len(value) >= a.n  # type: ignore[arg-type]
        for value, a in zip(values.values, spec.aggregations, strict=True)
        if not a.lifetime
    )


_SCALAR_FIELDS = {
    m.VALUE_TYPE_INT64: "int64_value",
    m.VALUE_TYPE_FLOAT64: "float64_value",
    m.VALUE_TYPE_STRING: "string_value",
    m.VALUE_TYPE_BOOL: "bool_value",
}


def _typed(value: object, value_type: int) -> m.Value:
    if value is None:
        return m.Value()
    if isinstance(value, list):
        return list_value(value, value_type)
    return m.Value(**{_SCALAR_FIELDS[value_type]: value})


def value_of(aggregation: WindowAggregation, state: TileState) -> object:
    """One aggregation's value over the merged tiles of its window.

    Empty windows: count, count_distinct and sum are 0, LAST_N and FIRST_N the empty
    list; the others are None (no value), as are sample variances of one value.
    """
    if aggregation.function == COUNT:
        return state.count
    if aggregation.function in SEQUENCE_FUNCTIONS:
        return sequence_value(aggregation, state.parts.get(aggregation.part))  # type: ignore[arg-type]
    if aggregation.part is not None:
        return _part_value(aggregation, state.parts.get(aggregation.part))
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


def sequence_value(aggregation: WindowAggregation, part: Part | None) -> object:
    """FIRST: the earliest event's value (None: none); LAST_N / FIRST_N: the kept events'
    values of the feature's column, or their event times in epoch seconds, oldest first."""
    kept = part.kept() if isinstance(part, EventSequence) else []
    if aggregation.function == FIRST:
        return kept[0][ORDER_KEY] if kept else None
    if aggregation.output == EVENT_TIME_OUTPUT:
        return [exact_ratio(item[0], 1_000_000) for item in kept]  # type: ignore[arg-type]
    index = ORDER_KEY + aggregation.output
    return [item[index] for item in kept]


def _part_value(aggregation: WindowAggregation, part: Part | None) -> int | float | None:
    function = aggregation.function
    if function in _MOMENT_FUNCTIONS:
        if not isinstance(part, Moments):
            return None
        ratio = variance_ratio(part.count, part.m2(), sample=function in (STDDEV, VARIANCE))
        variance = None if ratio is None else exact_ratio(*ratio)
        return spread(variance, root=function in (STDDEV, STDDEV_POP))
    if function == COUNT_DISTINCT:
        return part.count() if isinstance(part, Distinct) else 0
    assert function == PERCENTILE
    return part.quantile(aggregation.percentile) if isinstance(part, Quantiles) else None


def combine(
    spec: StreamViewSpec,
    tiles: Iterable[tuple[int, TileState]],
    read_us: int,
    lifetime: TileState | None = None,
) -> WindowValues:
    """Every aggregation of one entity at ``read_us`` from its tiles (start µs, state).

    Tiles outside every window are ignored, so callers may pass more. Each tile is merged
    once, into its segment (``segments``); each window is then the merge of its segments
    (merges are exact, so the grouping cannot change a value). Lifetime aggregations read
    ``lifetime`` (the entity's lifetime state, with every event whose tile has started by
    ``read_us``); without it, they merge every tile passed that has started.
    """
    last_start = floor_tile(read_us, spec.tile_us)
    cuts, covered = segments(spec, read_us) if spec.windows else ([], [])
    pieces = [TileState() for _ in cuts]
    whole = TileState() if spec.lifetime and lifetime is None else None
    first_cut = cuts[0] if cuts else last_start + 1
    for start, state in tiles:
        if whole is not None and start <= last_start:
            whole.merge(state)
        if cuts and first_cut <= start < cuts[-1]:
            pieces[bisect_right(cuts, start) - 1].merge(state)
    merged = _windows(spec, read_us, cuts, pieces)
    latest = None
    if spec.lifetime:
        merged[_LIFETIME] = lifetime if lifetime is not None else whole  # type: ignore[assignment]
    for first, _ in covered:
        latest = _later(latest, pieces[cuts.index(first)].latest_us)
    if spec.lifetime:
        latest = _later(latest, merged[_LIFETIME].latest_us)
    if latest is None:
        return WindowValues(tuple(None for _ in spec.aggregations), None)
    return WindowValues(
        tuple(
            value_of(a, merged[_LIFETIME if a.lifetime else a.window]) for a in spec.aggregations
        ),
        latest,
    )


_LIFETIME: WindowKey = (-1, -1)


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None or (b is not None and b > a) else a


def _windows(
    spec: StreamViewSpec, read_us: int, cuts: list[int], pieces: list[TileState]
) -> dict[WindowKey, TileState]:
    """Each window's merged state from its segments. Windows sharing their last segment
    (all of them, without offsets) grow one running merge from it backwards."""
    by_end: dict[int, list[tuple[int, WindowKey]]] = {}
    for window in spec.windows:
        first, last = window_span(read_us, window, spec.tile_us)
        by_end.setdefault(cuts.index(last + spec.tile_us), []).append((cuts.index(first), window))
    merged: dict[WindowKey, TileState] = {}
    for end, starts in by_end.items():
        running, index = TileState(), end
        for begin, window in sorted(starts, reverse=True):
            while index > begin:
                index -= 1
                widened = TileState()
                widened.merge(running)
                widened.merge(pieces[index])
                running = widened
            merged[window] = running
    return merged


# -- (de)serialization: tiles are stored as compact JSON; decimals as exact strings ---------


STATE_VERSION = 2
"""States with parts carry ``"v": 2``; those without are written as version 1 (no "v"),
exactly as before ADR 0022, so existing views' tiles are unchanged."""


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
    raw: dict[str, object] = {"n": state.count, "t": state.latest_us, "c": columns}
    if state.parts:
        raw["v"] = STATE_VERSION
        raw["p"] = {key: state.parts[key].encode() for key in sorted(state.parts)}
    return json.dumps(raw, separators=(",", ":"))


def decode_state(text: str) -> TileState:
    raw = json.loads(text)
    version = raw.get("v", 1)
    if version > STATE_VERSION:
        raise ValueError(
            f"a stream state of version {version} was written by a newer Lathe (this one reads "
            f"up to {STATE_VERSION}); finish the rollout before reading it"
        )
    state = TileState(count=raw["n"], latest_us=raw["t"])
    for key, part in raw.get("p", {}).items():
        state.parts[key] = decode_part(key, part)
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
