"""STDDEV/VARIANCE, COUNT_DISTINCT, PERCENTILE, offsets and lifetime windows (ADR 0022), pure.

Each aggregation against a brute-force computation over the events in its window (exact
rationals; sketches within their stated error), and the guarantee ADR 0007 makes for the
old ones: any arrival order, batching, rollup grouping and the offline as-of path give the
same bits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from datasketches import cpc_sketch, cpc_union
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.definitions.rules import validate_repository
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.domain.streaming import sketches
from services.feature_store.domain.streaming.as_of import EventColumns, compute_as_of
from services.feature_store.domain.streaming.events import EventRejected, parse_event
from tests.support.time_axes import AXES, time_axis

SECOND = 1_000_000
A = agg.WindowAggregation
FIXED = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _spec(tile: int = SECOND, lateness: int = 20 * SECOND) -> agg.StreamViewSpec:
    """Every new function over a plain window, an offset window and a lifetime."""
    w, o = 30 * tile, 12 * tile
    aggregations = (
        A("n", agg.COUNT, "", w),
        A("sd", agg.STDDEV, "amount", w),
        A("var", agg.VARIANCE, "amount", w),
        A("sdp_off", agg.STDDEV_POP, "amount", w, offset_us=o),
        A("varp", agg.VARIANCE_POP, "amount", 2 * w),
        A("cd", agg.COUNT_DISTINCT, "merchant", w),
        A("cd_off", agg.COUNT_DISTINCT, "merchant", w, offset_us=o),
        A("p50", agg.PERCENTILE, "amount", w, percentile=50),
        A("p99_off", agg.PERCENTILE, "amount", 2 * w, percentile=99, offset_us=o),
        A("p0", agg.PERCENTILE, "amount", w, percentile=0),
        A("n_life", agg.COUNT, "", 0, lifetime=True),
        A("sum_life", agg.SUM, "amount", 0, lifetime=True),
        A("cd_life", agg.COUNT_DISTINCT, "merchant", 0, lifetime=True),
        A("p90_life", agg.PERCENTILE, "amount", 0, percentile=90, lifetime=True),
        A("sd_life", agg.STDDEV, "amount", 0, lifetime=True),
        A("sum_off", agg.SUM, "amount", 5 * tile, offset_us=2 * w),
    )
    return agg.StreamViewSpec("v", 1, "s", "loan_id", "at", tile, lateness, aggregations)


_AMOUNTS = st.one_of(
    st.sampled_from([0.1, 0.2, 0.3, -5.5, 1e-9, 123456.789, 0.0, -0.0, 1e15, 7]),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-(10**12), 10**12),
)
_MERCHANTS = st.one_of(
    st.sampled_from(["m1", "m2", "m3", 1, 1.0, True, "1", -0.0, 0]),
    st.text(max_size=4),
    st.integers(0, 300),
)


@st.composite
def _events(draw: st.DrawFn, spec: agg.StreamViewSpec, size: int = 120) -> list[agg.StreamEvent]:
    events = []
    for sequence in range(draw(st.integers(0, size))):
        at = draw(st.integers(0, 150)) * SECOND + draw(st.integers(0, SECOND - 1))
        skew = draw(st.integers(-spec.lateness_us // 4, spec.lateness_us))
        body: dict[str, object] = {"loan_id": draw(st.sampled_from("ab")), "at": at / 1e6}
        if draw(st.booleans()) or draw(st.booleans()):
            body["amount"] = draw(_AMOUNTS)
        if draw(st.booleans()) or draw(st.booleans()):
            body["merchant"] = draw(_MERCHANTS)
        at = round(Decimal(repr(at / 1e6)) * 1_000_000)
        events.append(parse_event(spec, body, arrival_us=at + skew, sequence=sequence))
    return events


def _known(spec, events, key, at, aggregation):
    """The events an online read at ``at`` puts in ``aggregation``'s window."""
    last = agg.floor_tile(at, spec.tile_us)
    if aggregation.lifetime:
        first = -(2**62)
    else:
        first, last = agg.window_span(at, aggregation.window, spec.tile_us)
    return [
        e
        for e in events
        if e.entity_key == key
        and e.arrival_us <= at
        and first <= agg.floor_tile(e.event_us, spec.tile_us) <= last
    ]


def _percentile_exact(values: list[float], percentile: float) -> Fraction:
    ordered = sorted(Fraction(v) for v in values)
    rank = Fraction(percentile) / 100 * (len(ordered) - 1)
    whole = math.floor(rank)
    if rank == whole:
        return ordered[whole]
    return ordered[whole] + (rank - whole) * (ordered[whole + 1] - ordered[whole])


def _brute(spec, aggregation, events):
    """The exact value of ``aggregation`` over ``events``; for sketches (past their
    exact bounds), a check that the value is within the stated error."""
    function, column = aggregation.function, aggregation.column
    if function == agg.COUNT:
        return len(events)
    if function == agg.SUM:
        return float(sum((Fraction(e.values[column]) for e in events if column in e.values), 0))
    if function == agg.COUNT_DISTINCT:
        keys = {e.parts[aggregation.part] for e in events if aggregation.part in e.parts}
        if len(keys) <= sketches.EXACT_DISTINCT:
            return len(keys)
        return lambda got: abs(got - len(keys)) <= 0.08 * len(keys)
    values = [Fraction(e.values[column]) for e in events if column in e.values]
    if function == agg.PERCENTILE:
        floats = [float(v) for v in values]
        if not floats:
            return None
        exact = _percentile_exact(floats, aggregation.percentile)
        if len(floats) <= sketches.EXACT_VALUES:
            return float(exact)
        ordered = sorted(floats)
        rank = aggregation.percentile / 100 * (len(ordered) - 1)
        neighbours = ordered[math.floor(rank)], ordered[math.ceil(rank)]
        bound = sketches.RELATIVE_ACCURACY * max(abs(x) for x in neighbours)
        return lambda got: abs(Fraction(got) - exact) <= bound * (1 + 1e-9) + 1e-300
    sample = function in (agg.STDDEV, agg.VARIANCE)
    if len(values) < (2 if sample else 1):
        return None
    mean = sum(values, Fraction(0)) / len(values)
    variance = sum(((v - mean) ** 2 for v in values), Fraction(0)) / (
        len(values) - (1 if sample else 0)
    )
    return (
        math.sqrt(float(variance)) if function in (agg.STDDEV, agg.STDDEV_POP) else float(variance)
    )


def _check(aggregation, got, expected) -> None:
    if callable(expected):
        assert got is not None and expected(got), (aggregation.name, got)
    else:
        assert got == expected, (aggregation.name, got, expected)
        assert type(got) is type(expected), aggregation.name


def _read(spec, tiles, key, at):
    return agg.combine(spec, [(start, s) for (k, start), s in tiles.items() if k == key], at)


@FIXED
@given(data=st.data())
def test_each_new_aggregation_equals_a_brute_force_computation(data: st.DataObject) -> None:
    spec = _spec()
    events = data.draw(_events(spec))
    at = data.draw(st.integers(0, 170)) * SECOND + data.draw(st.integers(0, SECOND - 1))
    tiles = agg.build_tiles(spec, [e for e in events if e.arrival_us <= at])
    for key in "abz":
        read = _read(spec, tiles, key, at)
        if read.latest_us is None:
            continue
        for aggregation, got in zip(spec.aggregations, read.values, strict=True):
            expected = _brute(spec, aggregation, _known(spec, events, key, at, aggregation))
            _check(aggregation, got, expected)


def test_large_windows_use_the_sketches_and_stay_within_their_error() -> None:
    spec = _spec(lateness=0)
    rng = random.Random(4)
    events = [
        parse_event(
            spec,
            {
                "loan_id": "a",
                "at": i % 30,
                "amount": rng.lognormvariate(3, 1.5) * rng.choice([1, 1, 1, -1]),
                "merchant": f"m{rng.randrange(3000)}",
            },
            arrival_us=(i % 30) * SECOND,
            sequence=i,
        )
        for i in range(4000)
    ]
    at = 29 * SECOND
    tiles = agg.build_tiles(spec, events)
    read = _read(spec, tiles, "a", at)
    state = agg.TileState()
    for _, s in tiles.items():
        state.merge(s)
    assert not state.parts["q:amount"].exact  # the histogram, not the values
    assert state.parts["d:merchant"].sketched
    for aggregation, got in zip(spec.aggregations, read.values, strict=True):
        expected = _brute(spec, aggregation, _known(spec, events, "a", at, aggregation))
        _check(aggregation, got, expected)


@FIXED
@given(data=st.data())
def test_any_order_batching_and_grouping_give_identical_states_and_values(
    data: st.DataObject,
) -> None:
    """Streamed (arrival order, random batches, each batch decoded, merged and encoded as
    the consumer does), backfilled (reverse order), rollups and the offline path."""
    spec = _spec()
    events = data.draw(_events(spec, 200))
    streamed: dict[agg.TileKey, str] = {}
    pending = sorted(events, key=lambda e: (e.arrival_us, e.sequence))
    while pending:
        size = data.draw(st.integers(1, 30))
        batch, pending = pending[:size], pending[size:]
        grouped: dict[agg.TileKey, list[agg.StreamEvent]] = {}
        for event in batch:
            grouped.setdefault(agg.tile_key(spec, event), []).append(event)
        for key, new in grouped.items():
            state = agg.decode_state(streamed.get(key, agg.EMPTY_STATE))
            for event in new:
                state.add(event)
            streamed[key] = agg.encode_state(state)
    backfilled = agg.build_tiles(spec, list(reversed(events)))
    assert {k: agg.encode_state(s) for k, s in backfilled.items()} == streamed

    # Rollups over 5 tiles, merged in shuffled order, equal the merge of their tiles.
    rollup_spec = dataclasses.replace(spec, tile_us=SECOND)
    shuffled = list(backfilled.items())
    random.Random(len(events)).shuffle(shuffled)
    rollups = agg.build_rollups(rollup_spec, dict(shuffled))
    assert {k: agg.encode_state(s) for k, s in rollups.items()} == {
        k: agg.encode_state(s) for k, s in agg.build_rollups(rollup_spec, backfilled).items()
    }

    times = [data.draw(st.integers(0, 175)) * SECOND + 1 for _ in range(6)]
    keys = [data.draw(st.sampled_from("abz")) for _ in times]
    with time_axis(data.draw(st.sampled_from(AXES), label="time axis")):
        offline = compute_as_of(spec, EventColumns.of(spec, events), keys, np.array(times))
    for i, (key, at) in enumerate(zip(keys, times, strict=True)):
        known = agg.build_tiles(spec, [e for e in events if e.arrival_us <= at])
        online = _read(spec, known, key, at)
        assert bool(offline.found[i]) == (online.latest_us is not None)
        for aggregation, value in zip(spec.aggregations, online.values, strict=True):
            name = aggregation.name
            got = offline.values[name][i].item() if offline.valid[name][i] else None
            if online.latest_us is None:
                assert got is None
                continue
            assert repr(got) == repr(value), (name, key, at)  # bits: -0.0 is not 0.0


def test_lifetime_reads_its_state_instead_of_tiles() -> None:
    """What an online read does: lifetime values from the lifetime state (every event
    whose tile has started), the other windows from the tiles in reach."""
    spec = _spec()
    rng = random.Random(2)
    events = [
        parse_event(
            spec,
            {"loan_id": "a", "at": t, "amount": rng.uniform(0, 9), "merchant": rng.randrange(9)},
            arrival_us=int(t * SECOND),
            sequence=i,
        )
        for i, t in enumerate(sorted(rng.uniform(0, 500) for _ in range(300)))
    ]
    at = 400 * SECOND + 5
    tiles = agg.build_tiles(spec, events)
    lifetime = agg.TileState()
    for event in events:
        if agg.floor_tile(event.event_us, spec.tile_us) <= agg.floor_tile(at, spec.tile_us):
            lifetime.add(event)
    first = at - spec.max_window_us - spec.tile_us
    in_reach = [(s, t) for (_, s), t in tiles.items() if s >= first]
    assert agg.combine(spec, in_reach, at, lifetime) == _read(spec, tiles, "a", at)


def test_offsets_and_lifetime_read_spans_cover_each_window_once() -> None:
    spec = agg.StreamViewSpec(
        "v",
        1,
        "s",
        "k",
        "at",
        60 * SECOND,
        0,
        (
            A("a", agg.SUM, "x", 3600 * SECOND),
            A("b", agg.SUM, "x", 30 * 86_400 * SECOND, offset_us=7 * 86_400 * SECOND),
            A("c", agg.SUM, "x", 3600 * SECOND, offset_us=40 * 86_400 * SECOND),
            A("d", agg.SUM, "x", 0, lifetime=True),
        ),
    )
    assert spec.max_window_us == 40 * 86_400 * SECOND + 3600 * SECOND
    read_us = 1_800_000_000 * SECOND + 12_345
    wanted = set()
    for window in spec.windows:
        first, last = agg.window_span(read_us, window, spec.tile_us)
        wanted |= set(range(first, last + 1, spec.tile_us))
    for rollups in (False, True):
        tile_spans, rollup_spans = agg.read_spans(spec, read_us, rollups)
        covered = [s for a, b in tile_spans for s in range(a, b + 1, spec.tile_us)] + [
            s
            for a, b in rollup_spans
            for r in range(a, b + 1, spec.rollup_us)
            for s in range(r, r + spec.rollup_us, spec.tile_us)
        ]
        assert sorted(covered) == sorted(wanted)  # each once, nothing between the windows
    assert agg.read_spans(
        agg.StreamViewSpec("v", 1, "s", "k", "at", SECOND, 0, (A("d", agg.COUNT, "", 0, True),)),
        read_us,
        True,
    ) == ([], [])


@FIXED
@given(
    items=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=0, max_size=3000),
    cuts=st.lists(st.integers(0, 3000), max_size=12),
    nest=st.booleans(),
)
def test_cpc_unions_serialize_identically_in_any_order_and_grouping(
    items: list[int], cuts: list[int], nest: bool
) -> None:
    """Why COUNT_DISTINCT uses CPC: its union result is a function of the set."""
    cuts = sorted({c for c in cuts if 0 < c < len(items)})
    parts = [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)], strict=True)]

    def sketch(values: list[int]) -> bytes:
        single = cpc_sketch(sketches.CPC_LG_K)
        for value in values:
            single.update(value)
        union = cpc_union(sketches.CPC_LG_K)
        union.update(single)
        return bytes(union.get_result().serialize())

    union = cpc_union(sketches.CPC_LG_K)
    halves = [parts[: len(parts) // 2], parts[len(parts) // 2 :]] if nest else [parts]
    for half in halves:
        inner = cpc_union(sketches.CPC_LG_K)
        for part in reversed(half):
            inner.update(cpc_sketch.deserialize(sketch(part)))
        union.update(inner.get_result())
    assert bytes(union.get_result().serialize()) == sketch(sorted(items))


@FIXED
@given(
    values=st.lists(st.text(max_size=3) | st.integers(0, 10**6), max_size=600),
    split=st.integers(0, 600),
)
def test_distinct_states_merge_to_the_same_bytes(values: list[object], split: int) -> None:
    keys = [sketches.distinct_key(v) for v in values]
    whole, left, right = sketches.Distinct(), sketches.Distinct(), sketches.Distinct()
    for key in keys:
        whole.add(key)  # type: ignore[arg-type]
    for key in keys[:split]:
        left.add(key)  # type: ignore[arg-type]
    for key in reversed(keys[split:]):
        right.add(key)  # type: ignore[arg-type]
    right.merge(sketches.Distinct.decode(json.loads(json.dumps(left.encode()))))
    assert right.encode() == whole.encode()
    assert right.count() == whole.count() == sketches.count_distinct(np.unique(np.array(keys)))


def test_signed_zeros_count_as_one_value() -> None:
    """-0.0 and 0.0 compare equal, so a sort keeps their arrival order: normalized."""
    states = []
    for order in ([-0.0, 0.0, 1.0], [0.0, 1.0, -0.0]):
        state = sketches.Quantiles()
        for value in order:
            state.add(value)
        states.append(state.encode())
    assert states[0] == states[1]
    assert repr(sketches.quantile_of([-0.0, -0.0], 50)) == repr(state.quantile(0)) == "0.0"


def test_count_distinct_error_as_measured() -> None:
    """Past 128 values: the relative standard error ADR 0022 states (~1.5%)."""
    rng = random.Random(11)
    errors = []
    for trial in range(300):
        n = rng.choice([129, 300, 1_000, 5_000, 20_000])
        state = sketches.Distinct()
        for i in range(n):
            state.add(sketches.distinct_key(f"t{trial}-{i}"))  # type: ignore[arg-type]
        errors.append((state.count() - n) / n)
    rse = math.sqrt(statistics.fmean(e * e for e in errors))
    print(f"COUNT_DISTINCT past the bound: RSE {rse:.4f}, max |error| {max(map(abs, errors)):.4f}")
    assert rse <= 0.02 and max(map(abs, errors)) <= 0.07


def test_percentile_error_as_measured() -> None:
    """Past 64 values: every percentile within 1% of the exact one (one-signed data)."""
    rng = random.Random(12)
    worst = 0.0
    for trial in range(60):
        draw = [
            lambda: rng.lognormvariate(0, 2),
            lambda: rng.uniform(1, 2),
            lambda: rng.paretovariate(1.2),
            lambda: -rng.expovariate(0.01),
        ][trial % 4]
        values = [draw() for _ in range(rng.choice([65, 500, 5000]))]
        state = sketches.Quantiles()
        for value in values:
            state.add(value)
        for p in (0, 1, 25, 50, 90, 99, 99.9, 100):
            exact = _percentile_exact(values, p)
            got = state.quantile(p)
            assert got is not None
            worst = max(worst, abs(float((Fraction(got) - exact) / exact)))
    print(f"PERCENTILE past the bound: worst relative error {worst:.5f}")
    assert worst <= sketches.RELATIVE_ACCURACY * (1 + 1e-9)


def test_bucket_keys_are_the_same_in_python_and_numpy() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.normal(0, 1e3, 50_000),
            rng.lognormal(0, 30, 50_000),
            [0.0, -0.0, 5e-324, -5e-324, 1e-310, 1.7976931348623157e308, -2.5, 1.0, 0.5],
        ]
    )
    vectorized = sketches.bucket_keys(values)
    assert vectorized.tolist() == [sketches.bucket_key(float(v)) for v in values]
    order = np.argsort(values, kind="stable")
    assert (np.diff(vectorized[order]) >= 0).all()  # keys sort like values


def test_states_are_versioned_and_unchanged_for_the_old_functions() -> None:
    old = agg.TileState()
    old.add(agg.StreamEvent("a", 5, 5, 1, {"x": Decimal("1.5")}))
    assert agg.encode_state(old) == (
        '{"n":1,"t":5,"c":{"x":[1,"1.5","1.5","1.5","1.5",5,5,1]}}'  # as before ADR 0022
    )
    new = agg.TileState()
    new.add(agg.StreamEvent("a", 5, 5, 1, {}, {"m:x": Decimal(2), "q:x": 2.0, "d:y": 7}))
    encoded = json.loads(agg.encode_state(new))
    assert encoded["v"] == 2 and set(encoded["p"]) == {"m:x", "q:x", "d:y"}
    assert agg.encode_state(agg.decode_state(agg.encode_state(new))) == agg.encode_state(new)
    encoded["v"] = 3
    with pytest.raises(ValueError, match="newer Lathe"):
        agg.decode_state(json.dumps(encoded))


def test_moments_are_exact_where_floats_cancel() -> None:
    """Values around 1e9 with a spread of 1: naive float formulas lose every digit."""
    spec = agg.StreamViewSpec(
        "v", 1, "s", "k", "at", SECOND, 0, (A("var", agg.VARIANCE, "x", 10 * SECOND),)
    )
    values = [1e9 + 4, 1e9 + 7, 1e9 + 13, 1e9 + 16]
    events = [
        parse_event(spec, {"k": "a", "at": 1, "x": v}, arrival_us=SECOND, sequence=i)
        for i, v in enumerate(values)
    ]
    tiles = agg.build_tiles(spec, events)
    [variance] = _read(spec, tiles, "a", 2 * SECOND).values
    assert variance == 30.0 == statistics.variance(values)
    naive = (sum(v * v for v in values) - sum(values) ** 2 / 4) / 3
    assert naive != 30.0  # what a float sum of squares would have said


def test_distinct_values_are_scalars_and_equal_numbers_count_once() -> None:
    spec = _spec()
    seen = [
        parse_event(spec, {"loan_id": "a", "at": 1, "merchant": v}, arrival_us=SECOND, sequence=0)
        for v in ("x", 1, 1.0, True, -0.0, 0, "1")
    ]
    keys = [e.parts["d:merchant"] for e in seen]
    assert keys[1] == keys[2] and keys[4] == keys[5] and len(set(keys)) == 5
    for bad in ({"a": 1}, [1], float("nan")):
        body = {"loan_id": "a", "at": 1, "merchant": bad}
        with pytest.raises(EventRejected) as rejected:
            parse_event(spec, body, arrival_us=SECOND, sequence=0)
        assert rejected.value.reason == "not_scalar:merchant"


def _duration(seconds: int) -> Duration:
    return Duration(seconds=seconds)


def _view(*aggregations: m.Aggregation) -> m.FeatureRepository:
    return m.FeatureRepository(
        entities=[m.Entity(name="loan", join_key="loan_id", key_type=m.VALUE_TYPE_STRING)],
        feature_views=[
            m.FeatureView(
                name="pay",
                version=1,
                entity="loan",
                stream_source=m.StreamSource(source="pay", event_time_field="at"),
                aggregations=list(aggregations),
            )
        ],
    )


def test_new_aggregations_are_typed_and_checked_at_apply() -> None:
    checked = validate_repository(
        _view(
            m.Aggregation(
                column="m",
                function=m.AGGREGATION_FUNCTION_COUNT_DISTINCT,
                window=_duration(3600),
                name="merchants_1h",
            ),
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_PERCENTILE,
                percentile=99.9,
                window=_duration(86400 * 30),
                offset=_duration(86400 * 7),
                name="p999_30d_7d_ago",
            ),
            m.Aggregation(
                column="x", function=m.AGGREGATION_FUNCTION_STDDEV, lifetime=True, name="sd"
            ),
        ),
        [],
    )
    assert [(f.name, f.type) for f in checked.feature_views[0].features] == [
        ("merchants_1h", m.VALUE_TYPE_INT64),
        ("p999_30d_7d_ago", m.VALUE_TYPE_FLOAT64),
        ("sd", m.VALUE_TYPE_FLOAT64),
    ]


@pytest.mark.parametrize(
    ("aggregation", "message"),
    [
        (
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_PERCENTILE,
                percentile=101,
                window=_duration(60),
                name="p",
            ),
            "percentile must be from 0 to 100",
        ),
        (
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_PERCENTILE,
                percentile=math.nan,
                window=_duration(60),
                name="p",
            ),
            "percentile must be from 0 to 100",
        ),
        (
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_SUM,
                percentile=50,
                window=_duration(60),
                name="s",
            ),
            "only for PERCENTILE",
        ),
        (
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_SUM,
                lifetime=True,
                window=_duration(60),
                name="s",
            ),
            "a lifetime aggregation has no window",
        ),
        (
            m.Aggregation(column="x", function=m.AGGREGATION_FUNCTION_SUM, name="s"),
            "set lifetime instead",
        ),
        (
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_SUM,
                window=_duration(60),
                offset=_duration(90),
                name="s",
            ),
            "offset must be zero or a positive multiple",
        ),
        (
            m.Aggregation(
                column="",
                function=m.AGGREGATION_FUNCTION_COUNT_DISTINCT,
                window=_duration(60),
                name="s",
            ),
            "column",
        ),
        (
            m.Aggregation(column="x", function=999, window=_duration(60), name="s"),  # type: ignore[arg-type]
            "unknown function",
        ),
        (
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_SUM,
                window=_duration(60 * 86400 * 365),
                offset=_duration(60 * 86400 * 365),
                name="s",
            ),
            "reach back",
        ),
    ],
)
def test_bad_new_aggregations_are_refused(aggregation: m.Aggregation, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_repository(_view(aggregation), [])
