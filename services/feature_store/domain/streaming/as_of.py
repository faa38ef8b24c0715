"""Stream aggregates as of each label row's time, vectorized: the offline side of tiles.

For a label (entity, t) every aggregation takes exactly what an online read at t would
have returned: the events already known at t (arrival_time <= t) whose tile lies in the
window ``[floor(t) - W + tile, floor(t)]``. (For events that arrive after their event time
— all but producer-clock-skewed ones — "known at t" implies event_time <= t.) Values are
identical to the tile path, not approximately equal: sums are exact (decimals scaled to
integers), and every float is correctly rounded from the same exact value
(``aggregation.exact_ratio``).

Cost: sorting the events, a few binary searches per label and window, and work per label
proportional to the events within ``max delay`` (the largest arrival - event time seen,
at most the allowed lateness) before its time — the only ones that can be in a window
but not yet known. Min and max scan each label's window in C (``ufunc.reduceat``);
variances use prefix sums of exact squares. PERCENTILE and COUNT_DISTINCT are not
prefix-summable: each label's window is gathered and summarized with the tile path's own
functions (sketches.py), in time proportional to the events in it.

Windows may end before t (``offset``) or have no start (``lifetime``); a lifetime window
is every event known at t whose tile had started by t, as the lifetime state online.

Sequences (FIRST, LAST_N, FIRST_N; ADR 0021): positions order events by (event time,
arrival, sequence), exactly the tile path's order key, so a label's n latest known events
in a window are the last n of its known range — taken with vectorized index arithmetic
for every label (the known run, then the known tail events). They come back as Arrow
list columns.

Speed (ADR 0021, "meets <= 3x"): (entity, time) pairs are packed into one int64 key so
each bound is one ``searchsorted`` (time ranks only where entities x span overflow);
what depends on the events alone is kept per ``EventArrays`` (the parsed-event cache's
copies are read call after call); the searches and list columns run on two threads
(numpy and Arrow release the GIL).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.streaming.aggregation import (
    COUNT,
    COUNT_DISTINCT,
    DISTINCT,
    EVENT_TIME_OUTPUT,
    FIRST,
    LAST,
    LAST_N,
    MAX,
    MEAN,
    MIN,
    PERCENTILE,
    SEQUENCE_FUNCTIONS,
    STDDEV,
    STDDEV_POP,
    SUM,
    VARIANCE,
    VARIANCE_POP,
    StreamEvent,
    StreamViewSpec,
    WindowAggregation,
    WindowKey,
    exact_ratio,
    to_us,
)
from services.feature_store.domain.streaming.moments import m2_ratio, spread, variance_ratio
from services.feature_store.domain.streaming.sketches import count_distinct, quantile_of

EVENT_TIME = "event_time"
"""Output column: the greatest event time in the largest window (null: none known)."""

_ratio = np.frompyfunc(exact_ratio, 2, 1)
ELEMENT_ARROW = {
    m.VALUE_TYPE_BOOL: pa.bool_(),
    m.VALUE_TYPE_INT64: pa.int64(),
    m.VALUE_TYPE_FLOAT64: pa.float64(),
    m.VALUE_TYPE_STRING: pa.string(),
}
"""Arrow types of sequence elements (and of FIRST's values)."""


@dataclass
class EventColumns:
    """Accepted events of one view, column by column (cheaper than objects at scale)."""

    entity_keys: list[str] = field(default_factory=list)
    event_us: list[int] = field(default_factory=list)
    arrival_us: list[int] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)
    values: dict[str, list[Decimal | None]] = field(default_factory=dict)
    hashes: dict[str, list[int | None]] = field(default_factory=dict)
    """COUNT_DISTINCT columns: each event's value hash (None: absent)."""
    sequences: dict[str, list[tuple[object, ...] | None]] = field(default_factory=dict)
    """Sequence parts (by key): each event's values of their columns (None: left out)."""

    def append(
        self,
        event: StreamEvent,
        columns: Sequence[str],
        distinct: Sequence[str] = (),
        sequences: Sequence[str] = (),
    ) -> None:
        self.entity_keys.append(event.entity_key)
        self.event_us.append(event.event_us)
        self.arrival_us.append(event.arrival_us)
        self.sequence.append(event.sequence)
        for column in columns:
            self.values.setdefault(column, []).append(event.values.get(column))
        for column in distinct:
            self.hashes.setdefault(column, []).append(
                event.parts.get(f"{DISTINCT}:{column}")  # type: ignore[arg-type]
            )
        for key in sequences:
            item = event.parts.get(key)
            self.sequences.setdefault(key, []).append(
                None if item is None else item[1]  # type: ignore[index]
            )

    def __len__(self) -> int:
        return len(self.event_us)

    @classmethod
    def empty(cls, spec: StreamViewSpec) -> EventColumns:
        return cls(
            values={c: [] for c in spec.columns},
            hashes={c: [] for c in spec.distinct_columns},
            sequences={key: [] for key, _, _ in spec.sequences},
        )

    @classmethod
    def of(cls, spec: StreamViewSpec, events: Iterable[StreamEvent]) -> EventColumns:
        columns = cls.empty(spec)
        keys = sequence_keys(spec)
        for event in events:
            columns.append(event, spec.columns, spec.distinct_columns, keys)
        return columns


@dataclass(frozen=True)
class EventArrays:
    """Accepted events of one view as arrays: what the computation reads, built from
    ``EventColumns`` once and then concatenated and taken from in C (the parsed-event
    cache keeps these). Events keep their order."""

    entity_keys: pa.Array
    """Each event's entity key (string)."""
    event_us: np.ndarray
    arrival_us: np.ndarray
    sequence: np.ndarray
    values: dict[str, list[Decimal | None]]
    """Numeric columns as exact decimals (None: absent); Python objects, as summed."""
    hashes: dict[str, list[int | None]]
    sequences: dict[str, tuple[np.ndarray, tuple[pa.Array, ...]]]
    """Sequence part -> (which events carry it, its columns' values of those events)."""
    _sorted: list[tuple[np.ndarray, pa.Array, np.ndarray]] = field(
        default_factory=list, compare=False, repr=False
    )
    _compact: dict[str, tuple[pa.Array, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _ordered: list[_Ordered] = field(default_factory=list, compare=False, repr=False)
    _sequence_order: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __len__(self) -> int:
        return len(self.event_us)

    def sorted(self) -> tuple[np.ndarray, pa.Array, np.ndarray]:
        """(entity code per event, the keys the codes index, the events' position order:
        by entity, then (event time, arrival, sequence)), computed once per instance (a
        cached copy is read by call after call)."""
        if not self._sorted:
            encoded = self.entity_keys.dictionary_encode()
            entity = encoded.indices.to_numpy().astype(np.int64)
            order = np.lexsort((self.sequence, self.arrival_us, self.event_us, entity))
            self._sorted.append((entity, encoded.dictionary, order))
        return self._sorted[0]

    def ordered(self) -> _Ordered:
        """The events in position order and what the computation derives from them
        alone, once per instance (a cached copy is read by call after call)."""
        if not self._ordered:
            entity, dictionary, order = self.sorted()
            entity, event_us = entity[order], self.event_us[order]
            arrival_us = self.arrival_us[order]
            axis = _TimeAxis.direct(self.event_us, len(dictionary))
            keys = None if axis is None else entity * axis.size + axis.positions(event_us)
            delay = int(max(0, (arrival_us - event_us).max(initial=0)))
            self._ordered.append(_Ordered(entity, event_us, arrival_us, delay, axis, keys))
        return self._ordered[0]

    def sequence_order(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(whether the event at each position carries the part, each carrying
        position's index into the part's columns), once per instance."""
        if part not in self._sequence_order:
            order = self.sorted()[2]
            carried = self.sequences[part][0]
            present = carried[order]
            self._sequence_order[part] = present, (np.cumsum(carried) - 1)[order[present]]
        return self._sequence_order[part]

    def sequence_columns(self, part: str) -> tuple[pa.Array, ...]:
        """A sequence part's columns, those of strings with few distinct values (a
        merchant, a channel) dictionary-encoded, once per instance: a million values
        taken through a small dictionary read it from cache, ~4x faster than gathering
        scattered strings. Other columns as they are."""
        if part not in self._compact:
            self._compact[part] = tuple(_compact(c) for c in self.sequences[part][1])
        return self._compact[part]

    def label_codes(self, label_keys: Sequence[str] | pa.Array) -> np.ndarray:
        """Each label key's entity code (``sorted()``'s; -1: no event of that entity).
        A subset taken from these events keeps their codes."""
        keys = label_keys if isinstance(label_keys, pa.Array) else pa.array(label_keys, pa.string())
        found = pc.index_in(keys, value_set=self.sorted()[1])
        return found.fill_null(-1).to_numpy().astype(np.int64)

    @classmethod
    def of(cls, spec: StreamViewSpec, columns: EventColumns) -> EventArrays:
        sequences = {}
        for key, names, types in spec.sequences:
            items = columns.sequences[key]
            present = np.fromiter((i is not None for i in items), bool, len(items))
            kept = [i for i in items if i is not None]
            sequences[key] = (
                present,
                tuple(
                    pa.array([item[j] for item in kept], ELEMENT_ARROW[kind])  # type: ignore[index]
                    for j, kind in enumerate(types)
                ),
            )
            assert len(names) == len(types)
        return cls(
            entity_keys=pa.array(columns.entity_keys, pa.string()),
            event_us=np.asarray(columns.event_us, dtype=np.int64),
            arrival_us=np.asarray(columns.arrival_us, dtype=np.int64),
            sequence=np.asarray(columns.sequence, dtype=np.int64),
            values=columns.values,
            hashes=columns.hashes,
            sequences=sequences,
        )

    def concat(self, other: EventArrays) -> EventArrays:
        """These events, then ``other``'s (of the same view)."""
        if not len(other):
            return self
        if not len(self):
            return other
        return EventArrays(
            entity_keys=pa.concat_arrays([self.entity_keys, other.entity_keys]),
            event_us=np.concatenate([self.event_us, other.event_us]),
            arrival_us=np.concatenate([self.arrival_us, other.arrival_us]),
            sequence=np.concatenate([self.sequence, other.sequence]),
            values={k: v + other.values[k] for k, v in self.values.items()},
            hashes={k: v + other.hashes[k] for k, v in self.hashes.items()},
            sequences={
                key: (
                    np.concatenate([present, other.sequences[key][0]]),
                    tuple(
                        pa.concat_arrays([mine, theirs])
                        for mine, theirs in zip(arrays, other.sequences[key][1], strict=True)
                    ),
                )
                for key, (present, arrays) in self.sequences.items()
            },
        )

    def take(self, positions: np.ndarray) -> EventArrays:
        """The events at ``positions`` (ascending)."""
        chosen = positions.tolist() if self.values or self.hashes else []
        indices = pa.array(positions, pa.int64())
        sequences = {}
        for key, (present, arrays) in self.sequences.items():
            rank = np.cumsum(present) - 1  # an event's index among those carrying the part
            kept = positions[present[positions]]
            sequences[key] = present[positions], tuple(a.take(pa.array(rank[kept])) for a in arrays)
        taken = EventArrays(
            entity_keys=self.entity_keys.take(indices),
            event_us=self.event_us[positions],
            arrival_us=self.arrival_us[positions],
            sequence=self.sequence[positions],
            values={k: [v[i] for i in chosen] for k, v in self.values.items()},
            hashes={k: [v[i] for i in chosen] for k, v in self.hashes.items()},
            sequences=sequences,
        )
        if self._sorted:
            # The order of a subset is the whole's order restricted to it (a stable sort:
            # ties stay in index order either way), so it needs no sort of its own.
            entity, dictionary, order = self._sorted[0]
            keep = np.zeros(len(self), dtype=bool)
            keep[positions] = True
            index = np.cumsum(keep) - 1
            taken._sorted.append((entity[positions], dictionary, index[order[keep[order]]]))
        return taken


def sequence_keys(spec: StreamViewSpec) -> tuple[str, ...]:
    """The sequence parts ``EventColumns.append`` keeps for ``spec``."""
    return tuple(key for key, _, _ in spec.sequences)


@dataclass(frozen=True)
class AsOf:
    """Per label row: each aggregation's value and whether it has one."""

    values: dict[str, np.ndarray]
    """Aggregation name -> int64 (count) or float64 values; meaningless where not valid."""
    valid: dict[str, np.ndarray]
    """Aggregation name -> bool: False where the value is null."""
    latest_us: np.ndarray
    found: np.ndarray
    """Whether any event is known in the largest window (else every value is null)."""
    arrays: dict[str, pa.Array] = field(default_factory=dict)
    """Aggregation name -> its column, built whole (sequences: lists, FIRST: any type)."""

    def to_arrow(self, spec: StreamViewSpec) -> pa.Table:
        """One column per feature (int64 count, lists for LAST_N / FIRST_N, float64 for
        most others) + ``event_time``."""
        arrays = {}
        for aggregation in spec.aggregations:
            if aggregation.name in self.arrays:
                arrays[aggregation.name] = self.arrays[aggregation.name]
                continue
            kind = pa.int64() if aggregation.value_type == m.VALUE_TYPE_INT64 else pa.float64()
            arrays[aggregation.name] = pa.array(
                self.values[aggregation.name], type=kind, mask=~self.valid[aggregation.name]
            )
        arrays[EVENT_TIME] = pa.array(
            self.latest_us, type=pa.timestamp("us", tz="UTC"), mask=~self.found
        )
        return pa.table(arrays)


@dataclass(frozen=True)
class _Ordered:
    """Events in position order, with what depends on them alone (``EventArrays.ordered``)."""

    entity: np.ndarray
    event_us: np.ndarray
    arrival_us: np.ndarray
    max_delay: int
    """The largest arrival - event time: events older than t - this are known at t."""
    axis: _TimeAxis | None
    """The direct time axis; None where the span overflows (ranks are then per call)."""
    keys: np.ndarray | None
    """Entity code * axis.size + position, on the direct axis."""


@dataclass(frozen=True)
class _Labels:
    code: np.ndarray
    """Entity code per label (-1: no events for that entity)."""
    t: np.ndarray
    tail_from: np.ndarray
    """Events after this may be unknown at t; events at or before it are surely known."""

    by_key: np.ndarray
    """Labels ordered by (entity code, t): the order of their (entity, bound) queries."""

    @functools.cached_property
    def by_time(self) -> np.ndarray:
        """Labels ordered by t (every bound searched is non-decreasing in t): for the
        ranked time axis only."""
        return np.argsort(self.t)


def _label_order(code: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Labels ordered by (entity code, t): one int64 argsort instead of a lexsort (codes
    start at -1), of t itself where the packed key fits, else of t's rank."""
    if not len(t):
        return np.zeros(0, dtype=np.int64)
    low = int(t.min())
    span = int(t.max()) - low + 1
    if _packs(span, int(code.max()) + 2):
        return np.argsort((code + 1) * span + (t - low))
    rank = np.empty(len(t), dtype=np.int64)
    rank[np.argsort(t)] = np.arange(len(t))
    return np.argsort((code + 1) * len(t) + rank)


class _Series:
    """Sorted events (all, or those carrying one column) and range queries over them."""

    def __init__(self, keys: np.ndarray, arrival_us: np.ndarray, axis: _TimeAxis) -> None:
        self.keys = keys
        self.arrival_us = arrival_us
        self._axis = axis

    def bounds(self, labels: _Labels, times: np.ndarray, side: str) -> np.ndarray:
        by_time = None if self._axis.ranked is None else labels.by_time
        query = labels.code * self._axis.size + self._axis.positions(times, by_time)
        # Sorted needles search much faster; a bound is a non-decreasing function of t, so
        # the labels' order by (entity, t) sorts every bound's needles.
        found = np.empty(len(query), dtype=np.int64)
        order = labels.by_key
        found[order] = np.searchsorted(self.keys, query[order], side=side)  # type: ignore[call-overload]
        return np.where(labels.code >= 0, found, 0)


@dataclass(frozen=True)
class _TimeAxis:
    """Times as integers in the same order, so that (entity code, time) packs into one
    int64 key: entity code * size + position. Event times and every bound searched map
    exactly (equal times to equal positions), so searches on keys are searches on times.

    Direct (``ranked`` None): position = time - base, clipped to [0, size - 1]; base lies
    below every event time and size - 1 above, so a clipped bound still compares right
    with every event. Where entities x the events' time span overflow int64, the
    positions are ranks among ``ranked``: every event and bound time, sorted.
    """

    size: int
    base: int = 0
    ranked: np.ndarray | None = None

    @classmethod
    def direct(cls, event_us: np.ndarray, entities: int) -> _TimeAxis | None:
        """The direct axis for these events; None where it would overflow."""
        if not len(event_us):
            return cls(size=2)
        base = int(event_us.min()) - 1
        size = int(event_us.max()) - base + 2
        return cls(size=size, base=base) if _packs(size, entities) else None

    @classmethod
    def ranks(cls, event_us: np.ndarray, bounds: Iterable[np.ndarray]) -> _TimeAxis:
        """Ranks among the events' times and ``bounds`` (every time a search will use,
        each ordered by label time)."""
        ranked = _sorted_unique(event_us, *bounds)
        return cls(size=len(ranked) + 1, ranked=ranked)

    def positions(self, times: np.ndarray, by_time: np.ndarray | None = None) -> np.ndarray:
        """Each time's position; ``by_time`` orders ``times`` (searches run faster on
        sorted needles)."""
        if self.ranked is None:
            # Clipped before subtracting: a lifetime's start is int64's least value.
            return np.clip(times, self.base, self.base + self.size - 1) - self.base
        if by_time is None:  # event times in log order: nearly sorted already
            return np.searchsorted(self.ranked, times)
        ranks = np.empty(len(times), dtype=np.int64)
        ranks[by_time] = np.searchsorted(self.ranked, times[by_time])
        return ranks


_MAX_KEY = np.iinfo(np.int64).max // 2
"""Keys stay below this: entity code * size + position, with room for the -1 code."""


def _packs(size: int, groups: int) -> bool:
    """Whether group * size + position (position < size) fits in a key for every group."""
    return size <= _MAX_KEY // max(groups, 1)


@dataclass(frozen=True)
class _Window:
    """One series over one window for every label."""

    lo: np.ndarray
    hi: np.ndarray
    safe_end: np.ndarray
    """[lo, safe_end) are all known at t; known events past it come from the tail pairs."""
    count: np.ndarray
    tail_label: np.ndarray
    tail_pos: np.ndarray
    """Tail pairs (label, event position) in this window that are known at t."""
    unknown_label: np.ndarray
    unknown_pos: np.ndarray
    """Pairs in this window not yet known at t (subtracted from prefix sums)."""

    def last(self) -> np.ndarray:
        """Position of the last known event per label (-1: none)."""
        best = np.full(len(self.lo), -1, dtype=np.int64)
        np.maximum.at(best, self.tail_label, self.tail_pos)
        fallback = np.where(self.safe_end > self.lo, self.safe_end - 1, -1)
        return np.where(best >= 0, best, fallback)

    def extreme(self, ufunc: np.ufunc, values: np.ndarray, fill: float) -> np.ndarray:
        out = _range_reduce(ufunc, values, self.lo, self.safe_end, fill)
        ufunc.at(out, self.tail_label, values[self.tail_pos])
        return out

    def gathered(self, wanted: np.ndarray) -> Iterable[tuple[int, np.ndarray]]:
        """(label, positions of its known events in the window) for each wanted label."""
        order = np.argsort(self.tail_label, kind="stable")
        tail_labels, tail_pos = self.tail_label[order], self.tail_pos[order]
        bounds = np.searchsorted(tail_labels, np.arange(len(self.lo) + 1))
        for label in np.flatnonzero(wanted):
            tail = tail_pos[bounds[label] : bounds[label + 1]]
            known = np.arange(self.lo[label], self.safe_end[label])
            yield int(label), np.concatenate([known, tail])


def _window(
    lo: np.ndarray, hi: np.ndarray, tail_from: np.ndarray, series: _Series, labels: _Labels
) -> _Window:
    """The window ``[lo, hi)`` (positions) per label; ``tail_from``: the position after
    the labels' ``tail_from`` times."""
    tail_start = np.maximum(lo, tail_from)
    lengths = np.maximum(hi - tail_start, 0)
    pair_label = np.repeat(np.arange(len(hi)), lengths)
    offsets = np.cumsum(lengths) - lengths
    pair_pos = tail_start[pair_label] + (np.arange(lengths.sum()) - offsets[pair_label])
    inside = pair_pos >= lo[pair_label]
    known = series.arrival_us[pair_pos] <= labels.t[pair_label]
    unknown = inside & ~known
    count = (hi - lo) - np.bincount(pair_label[unknown], minlength=len(hi))
    return _Window(
        lo=lo,
        hi=hi,
        safe_end=np.minimum(np.maximum(lo, tail_start), hi),
        count=count,
        tail_label=pair_label[inside & known],
        tail_pos=pair_pos[inside & known],
        unknown_label=pair_label[unknown],
        unknown_pos=pair_pos[unknown],
    )


def _range_reduce(
    ufunc: np.ufunc, values: np.ndarray, starts: np.ndarray, ends: np.ndarray, fill: float
) -> np.ndarray:
    """ufunc over values[start:end) per range (fill where empty), in C.

    ``reduceat`` over interleaved (start, end) indices also reduces the gaps between
    consecutive ranges; sorting by start keeps those gaps disjoint, so the extra work is
    at most one pass over ``values``.
    """
    out = np.full(len(starts), fill, dtype=np.float64)
    nonempty = np.flatnonzero(ends > starts)
    if not len(nonempty):
        return out
    order = nonempty[np.argsort(starts[nonempty], kind="stable")]
    indices = np.empty(2 * len(order), dtype=np.intp)
    indices[0::2], indices[1::2] = starts[order], ends[order]
    padded = np.append(values, fill)  # an end equal to len(values) stays a valid index
    out[order] = ufunc.reduceat(padded, indices)[0::2]
    return out


def _compact(column: pa.Array) -> pa.Array:
    """A string column dictionary-encoded where it has at most a quarter as many
    distinct values as values; any other column as it is."""
    if not pa.types.is_string(column.type) or len(column) < 1024:
        return column
    encoded = column.dictionary_encode()
    return encoded if 4 * len(encoded.dictionary) <= len(column) else column


def _sorted_unique(*arrays: np.ndarray) -> np.ndarray:
    # A stable sort (timsort) merges runs: the arrays come sorted or nearly so.
    values = np.sort(np.concatenate(arrays), kind="stable")
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def _scaled(ratios: Sequence[tuple[int, int]]) -> tuple[np.ndarray, int]:
    """Exact integers v * 10**scale (object array) for prefix sums that never round.

    Each value is numerator / denominator with a denominator dividing a power of ten
    (it came from a decimal); scale is the smallest power all of them divide.
    """
    scale = 0
    for denominator in {d for _, d in ratios}:
        twos = (denominator & -denominator).bit_length() - 1
        fives = 0
        rest = denominator >> twos
        while rest > 1:
            rest //= 5
            fives += 1
        scale = max(scale, twos, fives)
    power = 10**scale
    factors = {d: power // d for _, d in ratios}
    scaled = np.empty(len(ratios), dtype=object)
    scaled[:] = [n * factors[d] for n, d in ratios]
    return scaled, scale


def compute_as_of(
    spec: StreamViewSpec,
    events: EventColumns | EventArrays,
    label_keys: Sequence[str] | pa.Array,
    label_us: np.ndarray,
    *,
    label_codes: np.ndarray | None = None,
) -> AsOf:
    """Every aggregation of ``spec`` per label (entity key, time in µs), in label order.

    ``events`` are the view's accepted events (parsed and within lateness) from any
    time range that covers the labels' windows; events of other entities are ignored.
    Label keys are stored keys (``label_keys``); "" or null matches no entity.
    ``label_codes``: ``events.label_codes(label_keys)``, where the caller has them.
    """
    if isinstance(events, EventColumns):
        events = EventArrays.of(spec, events)
    # Searches and takes release the GIL: two threads use both cores of a small machine.
    with ThreadPoolExecutor(max_workers=2) as threads:
        return _compute_as_of(spec, events, label_keys, label_us, label_codes, threads)


def _compute_as_of(
    spec: StreamViewSpec,
    events: EventArrays,
    label_keys: Sequence[str] | pa.Array,
    label_us: np.ndarray,
    label_codes: np.ndarray | None,
    threads: ThreadPoolExecutor,
) -> AsOf:
    n = len(label_keys)
    t = np.asarray(label_us, dtype=np.int64)
    order, ordered = events.sorted()[2], events.ordered()
    code = events.label_codes(label_keys) if label_codes is None else label_codes
    # Within an entity, position order is (event time, arrival time, sequence) order: the
    # last known event of a range is the one with the highest position.
    entity, event_us, arrival_us = ordered.entity, ordered.event_us, ordered.arrival_us

    floor = t - np.mod(t, spec.tile_us)
    labels = _Labels(code=code, t=t, tail_from=t - ordered.max_delay, by_key=_label_order(code, t))
    # Each window's event-time bounds [start, upper) per label; lifetime: no start.
    bounds: dict[WindowKey, tuple[np.ndarray, np.ndarray]] = {
        (w, o): (floor - o - w + spec.tile_us, floor - o + spec.tile_us) for w, o in spec.windows
    }
    if spec.lifetime:
        bounds[_LIFETIME] = (np.full(n, np.iinfo(np.int64).min), floor + spec.tile_us)
    if ordered.axis is not None and ordered.keys is not None:
        axis, keys = ordered.axis, ordered.keys
    else:
        axis = _TimeAxis.ranks(
            events.event_us,
            (
                e[labels.by_time]
                for e in (labels.tail_from, *(e for pair in bounds.values() for e in pair))
            ),
        )
        # Event times in log order are nearly sorted: quick to search.
        keys = entity * axis.size + axis.positions(events.event_us)[order]

    def windows_of(mask: np.ndarray | None) -> dict[WindowKey, _Window]:
        series = _Series(
            keys if mask is None else keys[mask],
            arrival_us if mask is None else arrival_us[mask],
            axis,
        )
        # The searches are most of a window's cost and release the GIL: side by side.
        searches = [(labels.tail_from, "right")]
        searches += [(times, "left") for pair in bounds.values() for times in pair]
        tail_from, *edges = threads.map(lambda search: series.bounds(labels, *search), searches)
        return {
            window: _window(lo, hi, tail_from, series, labels)
            for window, lo, hi in zip(bounds, edges[0::2], edges[1::2], strict=True)
        }

    all_events = windows_of(None)
    last_any = np.max([w.last() for w in all_events.values()], axis=0)
    found = last_any >= 0
    latest_us = np.zeros(n, dtype=np.int64)
    latest_us[found] = event_us[last_any[found]]
    live = found & (t - latest_us <= spec.ttl_us) if spec.ttl_us else found

    result = AsOf(values={}, valid={}, latest_us=latest_us, found=found)
    columns = {c: _Column.of(events.values[c], order, windows_of) for c in spec.columns}
    distinct = {c: _Distinct.of(events.hashes[c], order, windows_of) for c in spec.distinct_columns}

    def sequence_windows(mask: np.ndarray) -> dict[WindowKey, _Window]:
        # Where every event carries the sequence's columns (the common case), its windows
        # are those of all events.
        return all_events if mask.all() else windows_of(mask)

    sequences = {
        part: _Sequences.of(
            *events.sequence_order(part), events.sequence_columns(part), event_us, sequence_windows
        )
        for part, _, _ in spec.sequences
    }
    listed = [a for a in spec.aggregations if a.function in SEQUENCE_FUNCTIONS]
    for aggregation in listed:  # the picks each part's columns share, before the threads
        sequences[aggregation.part].picks(aggregation, _key(aggregation), live)  # type: ignore[index]
    columns_built = threads.map(
        lambda a: sequences[a.part].column(a, _key(a), live),  # type: ignore[index]
        listed,
    )
    result.arrays.update(zip((a.name for a in listed), columns_built, strict=True))
    for aggregation in spec.aggregations:
        name, key = aggregation.name, _key(aggregation)
        if aggregation.function in SEQUENCE_FUNCTIONS:
            continue  # built above
        if aggregation.function == COUNT:
            result.values[name] = all_events[key].count.astype(np.int64)
            result.valid[name] = live
        elif aggregation.function == COUNT_DISTINCT:
            result.values[name] = distinct[aggregation.column].counts(key, live)
            result.valid[name] = live
        else:
            column = columns[aggregation.column]
            window = column.windows[key]
            result.values[name] = column.aggregate(aggregation, window, live)
            needed = _MIN_VALUES.get(aggregation.function, 1)
            result.valid[name] = live & (window.count >= needed)
    return result


_LIFETIME: WindowKey = (-1, -1)
_MIN_VALUES = {SUM: 0, STDDEV: 2, VARIANCE: 2}
"""Values a window needs for a non-null result (default 1)."""


def _key(aggregation: WindowAggregation) -> WindowKey:
    return _LIFETIME if aggregation.lifetime else aggregation.window


@dataclass
class _Column:
    """The events carrying one column, in position order, and their windows."""

    ratios: list[tuple[int, int]]
    """Each value as the exact fraction numerator / denominator."""
    windows: dict[WindowKey, _Window]
    _prefix: tuple[np.ndarray, np.ndarray, int] | None = None
    _square_prefix: tuple[np.ndarray, np.ndarray] | None = None
    _floats: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        raw: list[Decimal | None],
        order: np.ndarray,
        windows_of: Callable[[np.ndarray], dict[WindowKey, _Window]],
    ) -> _Column:
        present = np.fromiter((raw[i] is not None for i in order), bool, len(order))
        ratios = [raw[i].as_integer_ratio() for i in order[present]]  # type: ignore[union-attr]
        return cls(ratios, windows_of(present))

    def aggregate(
        self, aggregation: WindowAggregation, window: _Window, live: np.ndarray
    ) -> np.ndarray:
        function = aggregation.function
        if function in (SUM, MEAN):
            return self._sum_or_mean(function, window, live)
        if function in _MOMENTS:
            return self._spread(function, window, live)
        floats = self.floats()
        if function == MIN:
            return window.extreme(np.minimum, floats, np.inf)
        if function == MAX:
            return window.extreme(np.maximum, floats, -np.inf)
        if function == PERCENTILE:
            out = np.zeros(len(live))
            for label, positions in window.gathered(live & (window.count > 0)):
                found = quantile_of(floats[positions].tolist(), aggregation.percentile)
                out[label] = np.nan if found is None else found
            return out
        assert function == LAST
        position = window.last()
        out = np.full(len(position), np.nan)
        out[position >= 0] = floats[position[position >= 0]]
        return out

    def _totals(self, window: _Window) -> tuple[np.ndarray, int]:
        """Exact sums (scaled by 10**scale) of the known values in the window per label."""
        if self._prefix is None:
            scaled, scale = _scaled(self.ratios)
            prefix = np.concatenate([np.zeros(1, dtype=object), np.cumsum(scaled, dtype=object)])
            self._prefix = scaled, prefix, scale
        scaled, prefix, scale = self._prefix
        totals = prefix[window.hi] - prefix[window.lo]
        np.subtract.at(totals, window.unknown_label, scaled[window.unknown_pos])
        return totals, scale

    def _sum_or_mean(self, function: str, window: _Window, live: np.ndarray) -> np.ndarray:
        totals, scale = self._totals(window)
        chosen = live if function == SUM else live & (window.count > 0)
        denominators = np.full(len(totals), 10**scale, dtype=object)
        if function == MEAN:
            denominators = denominators * np.maximum(window.count, 1).astype(object)
        out = np.zeros(len(totals), dtype=np.float64)
        if chosen.any():
            out[chosen] = _ratio(totals[chosen], denominators[chosen]).astype(np.float64)
        return out

    def _spread(self, function: str, window: _Window, live: np.ndarray) -> np.ndarray:
        """Variances and standard deviations from exact sums and sums of squares."""
        totals, scale = self._totals(window)
        if self._square_prefix is None:
            scaled = self._prefix[0]  # type: ignore[index]
            squares = scaled * scaled
            prefix = np.concatenate([np.zeros(1, dtype=object), np.cumsum(squares, dtype=object)])
            self._square_prefix = squares, prefix
        squares, prefix = self._square_prefix
        sums = prefix[window.hi] - prefix[window.lo]
        np.subtract.at(sums, window.unknown_label, squares[window.unknown_pos])
        sample = function in (STDDEV, VARIANCE)
        out = np.zeros(len(totals), dtype=np.float64)
        power = 10**scale
        for label in np.flatnonzero(live & (window.count >= (2 if sample else 1))):
            count = int(window.count[label])
            m2 = m2_ratio(count, (int(totals[label]), power), (int(sums[label]), power * power))
            ratio = variance_ratio(count, m2, sample=sample)
            assert ratio is not None
            value = spread(exact_ratio(*ratio), root=function in (STDDEV, STDDEV_POP))
            out[label] = value
        return out

    def floats(self) -> np.ndarray:
        """Each value correctly rounded, as the tile path reads it (values are finite)."""
        if self._floats is None:
            self._floats = np.fromiter(
                (n / d for n, d in self.ratios), np.float64, len(self.ratios)
            )
        return self._floats


_MOMENTS = frozenset({STDDEV, VARIANCE, STDDEV_POP, VARIANCE_POP})


@dataclass
class _Distinct:
    """The events carrying one COUNT_DISTINCT column (their value hashes) and windows."""

    hashes: np.ndarray
    windows: dict[WindowKey, _Window]

    @classmethod
    def of(
        cls,
        raw: list[int | None],
        order: np.ndarray,
        windows_of: Callable[[np.ndarray], dict[WindowKey, _Window]],
    ) -> _Distinct:
        present = np.fromiter((raw[i] is not None for i in order), bool, len(order))
        hashes = np.fromiter((raw[i] for i in order[present]), np.int64)  # type: ignore[misc]
        return cls(hashes, windows_of(present))

    def counts(self, key: WindowKey, live: np.ndarray) -> np.ndarray:
        window = self.windows[key]
        out = np.zeros(len(live), dtype=np.int64)
        for label, positions in window.gathered(live & (window.count > 0)):
            out[label] = count_distinct(np.unique(self.hashes[positions]))
        return out


@dataclass
class _Sequences:
    """The events carrying one sequence part (all its columns present), in position order
    — (event time, arrival, sequence), the tile path's order key — and their windows."""

    columns: tuple[pa.Array, ...]
    """Each column's values, in the events' original order (``rank`` maps to them); a
    string column may come dictionary-encoded (``EventArrays.sequence_columns``)."""
    rank: np.ndarray
    """Position i's index into ``columns``."""
    event_us: np.ndarray
    windows: dict[WindowKey, _Window]
    _chosen: dict[tuple[WindowKey, bool, int], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )

    @classmethod
    def of(
        cls,
        present: np.ndarray,
        rank: np.ndarray,
        columns: tuple[pa.Array, ...],
        event_us: np.ndarray,
        windows_of: Callable[[np.ndarray], dict[WindowKey, _Window]],
    ) -> _Sequences:
        """``present`` and ``rank``: ``EventArrays.sequence_order``; ``event_us`` per position."""
        return cls(columns, rank, event_us[present], windows_of(present))

    def chosen(
        self, key: WindowKey, latest: bool, n: int, live: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, positions): label i's kept events are positions[offsets[i]:offsets[i +
        1]], ascending (oldest first); none where not ``live``."""
        cached = self._chosen.get((key, latest, n))
        if cached is not None:
            return cached
        window = self.windows[key]
        # Per label: the surely known run [lo, safe_end), then its tail events known at
        # t (all past safe_end, ascending, grouped by label): take the last (LAST_N) or
        # first n of run + tail, as counts from each part.
        run = window.safe_end - window.lo
        tails = np.bincount(window.tail_label, minlength=len(live))
        kept = np.where(live, np.minimum(n, run + tails), 0)
        from_tail = np.minimum(tails, kept) if latest else kept - np.minimum(run, kept)
        from_run = kept - from_tail
        run_start = window.safe_end - from_run if latest else window.lo
        offsets = np.zeros(len(live) + 1, dtype=np.int64)
        np.cumsum(kept, out=offsets[1:])
        # Each label's run part from one repeat; its tail part written over the rest.
        positions = np.repeat(run_start - offsets[:-1], kept) + np.arange(int(offsets[-1]))
        label = window.tail_label
        rank = np.arange(len(label)) - (np.cumsum(tails) - tails)[label]
        skipped = (tails - from_tail)[label] if latest else 0
        chosen = (rank >= skipped) & (rank < skipped + from_tail[label])
        label, rank = label[chosen], (rank - skipped)[chosen]
        positions[offsets[label] + from_run[label] + rank] = window.tail_pos[chosen]
        self._chosen[(key, latest, n)] = offsets, positions
        return offsets, positions

    def elements(self, output: int, value_type: int, positions: np.ndarray) -> pa.Array:
        """The values of one column (or the event times in epoch seconds) of the events at
        ``positions`` (-1: null)."""
        element = pa.float64() if output == EVENT_TIME_OUTPUT else ELEMENT_ARROW[value_type]
        missing = positions < 0
        if missing.all():
            return pa.nulls(len(positions), element)
        mask = missing if missing.any() else None
        if mask is not None:
            positions = np.where(missing, 0, positions)
        if output == EVENT_TIME_OUTPUT:
            return pa.array(self.event_us[positions] / 1e6, element, mask=mask)
        column = self.columns[output]
        # One take through the composed index, not a take into position order first.
        index = pa.array(self.rank[positions], pa.int64(), mask=mask)
        if isinstance(column, pa.DictionaryArray):
            assert column.dictionary.type == element
            return column.dictionary.take(column.indices.take(index))
        assert column.type == element
        return column.take(index)

    def picks(
        self, aggregation: WindowAggregation, key: WindowKey, live: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``chosen`` for this aggregation's direction and n."""
        return self.chosen(key, aggregation.function == LAST_N, aggregation.n, live)

    def column(self, aggregation: WindowAggregation, key: WindowKey, live: np.ndarray) -> pa.Array:
        """The feature per label: FIRST's value, or LAST_N / FIRST_N's list."""
        offsets, positions = self.picks(aggregation, key, live)
        if aggregation.function == FIRST:
            has = offsets[1:] > offsets[:-1]
            first = np.full(len(has), -1, dtype=np.int64)
            first[has] = positions[offsets[:-1][has]]
            return self.elements(aggregation.output, aggregation.value_type, first)
        element_type = (
            m.VALUE_TYPE_FLOAT64
            if aggregation.output == EVENT_TIME_OUTPUT
            else aggregation.column_types[aggregation.output]
        )
        values = self.elements(aggregation.output, element_type, positions)
        return pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)),
            values,
            type=pa.list_(ELEMENT_ARROW[element_type]),
            mask=pa.array(~live),
        )


def _python(values: object) -> list[object]:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.to_pylist()
    return list(values)  # type: ignore[call-overload]


def _key_text(key: object) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    if isinstance(key, str):
        return key
    return ""  # null or another type: matches no entity (the row comes back null)


def label_keys(entity_keys: object) -> list[str]:
    """Label rows' entity keys as stored keys: int64 by decimal text; anything else
    (null included) as "", which matches no entity (the row comes back null)."""
    return [_key_text(k) for k in _python(entity_keys)]


def label_key_array(entity_keys: object) -> pa.Array:
    """``label_keys`` as an Arrow string array, converted in C where the keys come as
    Arrow strings or integers (nulls stay null: they match no entity either)."""
    if isinstance(entity_keys, pa.ChunkedArray):
        entity_keys = entity_keys.combine_chunks()
    if isinstance(entity_keys, pa.Array):
        if pa.types.is_dictionary(entity_keys.type):
            entity_keys = entity_keys.dictionary_decode()
        kind = entity_keys.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind):
            return pc.cast(entity_keys, pa.string())
    return pa.array(label_keys(entity_keys), pa.string())


def label_times_us(as_of: object) -> np.ndarray:
    """Label rows' times in µs: an Arrow timestamp array (no nulls; a timezone-less one is
    UTC) or aware datetimes."""
    if isinstance(as_of, pa.ChunkedArray):
        as_of = as_of.combine_chunks()
    if isinstance(as_of, pa.Array):
        if not pa.types.is_timestamp(as_of.type) or as_of.null_count:
            raise InvalidArgument("as_of must be a timestamp array without nulls")
        return (
            as_of.cast(pa.timestamp("us", tz=as_of.type.tz))
            .to_numpy(zero_copy_only=False)
            .view(np.int64)
        )
    moments = list(as_of)  # type: ignore[call-overload]
    if any(not isinstance(t, datetime) or t.tzinfo is None for t in moments):
        raise InvalidArgument("as_of times must be timezone-aware datetimes")
    return np.fromiter((to_us(t) for t in moments), np.int64, len(moments))
