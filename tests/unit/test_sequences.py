"""FIRST, LAST_N and FIRST_N (ADR 0021), pure: against brute force, and the same bits
streamed in any batching, backfilled, rolled up and offline (as of each label's time)."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.definitions.rules import validate_repository
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.domain.streaming import as_of
from services.feature_store.domain.streaming.as_of import (
    EventArrays,
    EventColumns,
    compute_as_of,
)
from services.feature_store.domain.streaming.events import EventRejected, parse_event
from services.feature_store.domain.training import content_id
from services.feature_store.domain.values import coerce, from_python, to_python, value_of, violated
from tests.support.time_axes import AXES, time_axis

SECOND = 1_000_000
FIXED = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
F, INT, S, B = m.VALUE_TYPE_FLOAT64, m.VALUE_TYPE_INT64, m.VALUE_TYPE_STRING, m.VALUE_TYPE_BOOL


def _aggregation(name: str, function: int, window_s: int = 30, **fields: object) -> m.Aggregation:
    aggregation = m.Aggregation(name=name, function=function, **fields)  # type: ignore[arg-type]
    if not fields.get("lifetime"):
        aggregation.window.FromSeconds(window_s)
    return aggregation


def _view(*aggregations: m.Aggregation) -> m.FeatureView:
    view = m.FeatureView(
        name="txns",
        version=1,
        entity="loan",
        stream_source=m.StreamSource(source="pay", event_time_field="at"),
        aggregations=aggregations,
    )
    view.tile_size.FromSeconds(1)
    view.allowed_lateness.FromSeconds(20)
    repository = m.FeatureRepository(
        entities=[m.Entity(name="loan", join_key="loan_id", key_type=m.VALUE_TYPE_STRING)],
        feature_views=[view],
    )
    return validate_repository(repository, []).feature_views[0]


def _standard_view() -> m.FeatureView:
    offset = m.Aggregation()
    offset.offset.FromSeconds(12)
    return _view(
        _aggregation("n", m.AGGREGATION_FUNCTION_COUNT),
        _aggregation(
            "last3",
            m.AGGREGATION_FUNCTION_LAST_N,
            n=3,
            columns=["amount", "merchant"],
            column_types=[F, S],
        ),
        _aggregation(
            "amounts5", m.AGGREGATION_FUNCTION_LAST_N, n=5, column="amount", offset=offset.offset
        ),
        _aggregation(
            "first_merchant", m.AGGREGATION_FUNCTION_FIRST, column="merchant", value_type=S
        ),
        _aggregation(
            "first2",
            m.AGGREGATION_FUNCTION_FIRST_N,
            60,
            n=2,
            columns=["amount", "flag"],
            column_types=[F, B],
        ),
        _aggregation(
            "counts",
            m.AGGREGATION_FUNCTION_LAST_N,
            n=4,
            column="cnt",
            value_type=INT,
            lifetime=True,
        ),
    )


def test_definitions_give_one_list_feature_per_column_and_the_event_times() -> None:
    view = _standard_view()
    assert [(f.name, f.type) for f in view.features] == [
        ("n", m.VALUE_TYPE_INT64),
        ("last3__amount", m.VALUE_TYPE_FLOAT64_LIST),
        ("last3__merchant", m.VALUE_TYPE_STRING_LIST),
        ("last3__event_time", m.VALUE_TYPE_FLOAT64_LIST),
        ("amounts5", m.VALUE_TYPE_FLOAT64_LIST),
        ("first_merchant", m.VALUE_TYPE_STRING),
        ("first2__amount", m.VALUE_TYPE_FLOAT64_LIST),
        ("first2__flag", m.VALUE_TYPE_BOOL_LIST),
        ("first2__event_time", m.VALUE_TYPE_FLOAT64_LIST),
        ("counts", m.VALUE_TYPE_INT64_LIST),
    ]
    spec = agg.spec_of(view, "loan_id")
    assert [a.name for a in spec.aggregations] == [f.name for f in view.features]
    assert len(spec.sequences) == 5  # last3's three features share one part


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"column": "x"}, "n must be from 1 to 1000"),
        ({"column": "x", "n": 1001}, "n must be from 1 to 1000"),
        ({"column": "x", "n": 2, "columns": ["a"]}, "not both"),
        ({"n": 2, "columns": ["a", "a"]}, "defined twice"),
        ({"n": 2, "columns": ["a", "b"], "column_types": [F]}, "one type per column"),
        ({"n": 2, "column": "x", "value_type": m.VALUE_TYPE_TIMESTAMP}, "value_type must be"),
        ({"n": 2, "columns": ["a" * 62]}, "feature view 'txns' field"),
    ],
)
def test_bad_sequence_definitions_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _view(_aggregation("s", m.AGGREGATION_FUNCTION_LAST_N, **fields))


def test_n_is_refused_on_other_functions() -> None:
    with pytest.raises(InvalidArgument, match="only for LAST_N and FIRST_N"):
        _view(_aggregation("s", m.AGGREGATION_FUNCTION_SUM, column="x", n=3))


_MERCHANTS = st.sampled_from(["m1", "m2", "", 'ü,"x', "m3"])


@st.composite
def _events(draw: st.DrawFn, spec: agg.StreamViewSpec, size: int = 120) -> list[agg.StreamEvent]:
    events = []
    for sequence in range(draw(st.integers(0, size))):
        # Few distinct times: ties in event time are broken by arrival, then sequence.
        at = draw(st.integers(0, 150)) * SECOND + draw(st.sampled_from([0, 1, 500_000]))
        skew = draw(st.integers(-spec.lateness_us // 4, spec.lateness_us))
        body: dict[str, object] = {"loan_id": draw(st.sampled_from("ab")), "at": at / 1e6}
        if draw(st.integers(0, 4)):
            body["amount"] = draw(st.one_of(st.floats(-1e6, 1e6), st.integers(-9, 9)))
        if draw(st.integers(0, 4)):
            body["merchant"] = draw(_MERCHANTS)
        if draw(st.integers(0, 4)):
            body["flag"] = draw(st.booleans())
        if draw(st.integers(0, 4)):
            body["cnt"] = draw(st.integers(-(2**63), 2**63 - 1))
        at = round(Decimal(repr(at / 1e6)) * 1_000_000)
        events.append(parse_event(spec, body, arrival_us=at + skew, sequence=sequence))
    return events


def _known(spec, events, key, at, aggregation):
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


def _brute(aggregation: agg.WindowAggregation, events: list[agg.StreamEvent]) -> object:
    """Sort the window's events that carry every column, take the n latest or earliest."""
    carrying = sorted((e for e in events if aggregation.part in e.parts), key=lambda e: e.order_key)
    kept = (
        carrying[-aggregation.n :]
        if aggregation.function == agg.LAST_N
        else carrying[: aggregation.n]
    )
    if aggregation.function == agg.FIRST:
        return kept[0].parts[aggregation.part][1][0] if kept else None  # type: ignore[index]
    if aggregation.output == agg.EVENT_TIME_OUTPUT:
        return [e.event_us / 1e6 for e in kept]
    return [e.parts[aggregation.part][1][aggregation.output] for e in kept]  # type: ignore[index]


def _read(spec, tiles, key, at, lifetime=None):
    return agg.combine(
        spec, [(start, s) for (k, start), s in tiles.items() if k == key], at, lifetime
    )


@FIXED
@given(data=st.data())
def test_sequences_equal_a_brute_force_computation(data: st.DataObject) -> None:
    spec = agg.spec_of(_standard_view(), "loan_id")
    events = data.draw(_events(spec))
    at = data.draw(st.integers(0, 170)) * SECOND + data.draw(st.integers(0, SECOND - 1))
    tiles = agg.build_tiles(spec, [e for e in events if e.arrival_us <= at])
    for key in "abz":
        read = _read(spec, tiles, key, at)
        if read.latest_us is None:
            continue
        for aggregation, got in zip(spec.aggregations, read.values, strict=True):
            if aggregation.function in agg.SEQUENCE_FUNCTIONS:
                expected = _brute(aggregation, _known(spec, events, key, at, aggregation))
                assert repr(got) == repr(expected), (aggregation.name, got, expected)


@FIXED
@given(data=st.data())
def test_streamed_backfilled_rolled_up_and_offline_sequences_are_identical(
    data: st.DataObject,
) -> None:
    spec = agg.spec_of(_standard_view(), "loan_id")
    events = data.draw(_events(spec, 200))
    streamed: dict[agg.TileKey, str] = {}
    pending = sorted(events, key=lambda e: (e.arrival_us, e.sequence))
    while pending:
        size = data.draw(st.integers(1, 30))
        batch, pending = pending[:size], pending[size:]
        for event in batch:
            key = agg.tile_key(spec, event)
            state = agg.decode_state(streamed.get(key, agg.EMPTY_STATE))
            state.add(event)
            streamed[key] = agg.encode_state(state)
    backfilled = agg.build_tiles(spec, list(reversed(events)))
    assert {k: agg.encode_state(s) for k, s in backfilled.items()} == streamed

    rollup_spec = dataclasses.replace(spec, tile_us=SECOND)
    shuffled = list(backfilled.items())
    random.Random(len(events)).shuffle(shuffled)
    assert {
        k: agg.encode_state(s) for k, s in agg.build_rollups(rollup_spec, dict(shuffled)).items()
    } == {k: agg.encode_state(s) for k, s in agg.build_rollups(rollup_spec, backfilled).items()}

    times = [
        data.draw(st.integers(0, 175)) * SECOND + data.draw(st.integers(0, 3)) for _ in range(8)
    ]
    keys = [data.draw(st.sampled_from("abz")) for _ in times]
    with time_axis(data.draw(st.sampled_from(AXES), label="time axis")):
        offline = compute_as_of(spec, EventColumns.of(spec, events), keys, np.array(times))
    offline = offline.to_arrow(spec)
    for i, (key, at) in enumerate(zip(keys, times, strict=True)):
        known = [e for e in events if e.arrival_us <= at]
        lifetime = agg.TileState()
        for event in known:
            if event.entity_key == key and agg.floor_tile(event.event_us, SECOND) <= agg.floor_tile(
                at, SECOND
            ):
                lifetime.add(event)
        online = _read(spec, agg.build_tiles(spec, known), key, at, lifetime)
        for aggregation, value in zip(spec.aggregations, online.values, strict=True):
            got = offline.column(aggregation.name)[i].as_py()
            expected = None if online.latest_us is None else value
            assert repr(got) == repr(expected), (aggregation.name, key, at)
            row = online.feature_row(spec) if online.latest_us is not None else None
            if row is not None:  # the served Value holds the same
                index = spec.aggregations.index(aggregation)
                assert repr(to_python(row.values[index])) == repr(expected)


def test_a_value_of_the_wrong_type_rejects_the_event_and_nulls_leave_it_out() -> None:
    spec = agg.spec_of(_standard_view(), "loan_id")
    with pytest.raises(EventRejected) as caught:
        parse_event(spec, {"loan_id": "a", "at": 1, "merchant": 5}, arrival_us=SECOND, sequence=1)
    assert caught.value.reason == "wrong_type:merchant"
    event = parse_event(
        spec,
        {"loan_id": "a", "at": 1, "amount": 2, "merchant": None},
        arrival_us=SECOND,
        sequence=1,
    )
    assert [k for k in event.parts] == ["sl:5:3:amount"]  # last3 needs merchant too
    assert event.parts["sl:5:3:amount"] == ((SECOND, SECOND, 1), (2.0,))


def test_long_sequences_keep_n_and_serve_oldest_first() -> None:
    """Every event carries the column (the offline path reuses the all-events windows)."""
    view = _view(
        _aggregation("last", m.AGGREGATION_FUNCTION_LAST_N, 3600, n=50, column="x", value_type=INT)
    )
    spec = agg.spec_of(view, "loan_id")
    events = [
        parse_event(
            spec, {"loan_id": "a", "at": t, "x": t}, arrival_us=(t + 5) * SECOND, sequence=t
        )
        for t in random.Random(1).sample(range(1000), 1000)
    ]
    read = _read(spec, agg.build_tiles(spec, events), "a", 2000 * SECOND)
    assert read.values[0] == list(range(950, 1000))
    times = np.array([2000, 999, 500, 3, 0]) * SECOND
    offline = compute_as_of(spec, EventColumns.of(spec, events), ["a"] * 5, times).to_arrow(spec)
    for i, at in enumerate(times):
        known = [e for e in events if e.arrival_us <= at]
        online = _read(spec, agg.build_tiles(spec, known), "a", int(at))
        expected = online.values[0] if online.latest_us is not None else None
        assert offline.column("last")[i].as_py() == expected, at


def test_few_distinct_strings_are_taken_through_a_dictionary_with_the_same_answer() -> None:
    """Past 1,024 events a string column with few distinct values is dictionary-encoded
    for the computation (as_of._compact); lists, FIRST's nulls and the rest stay equal
    to taking the plain strings, and a column of mostly distinct strings stays plain."""
    spec = agg.spec_of(_standard_view(), "loan_id")
    rng = random.Random(7)
    events = []
    for sequence in range(3000):
        at = rng.randrange(200) * SECOND + rng.randrange(SECOND)
        body: dict[str, object] = {"loan_id": rng.choice("abcdefgh"), "at": at / SECOND}
        if rng.random() < 0.9:  # some events lack the columns: FIRST and lists skip them
            body |= {"amount": rng.uniform(-5, 5), "merchant": f"m{rng.randrange(12)}"}
        body |= {"flag": rng.random() < 0.5, "cnt": rng.randrange(9)}
        events.append(
            parse_event(spec, body, arrival_us=at + rng.randrange(5 * SECOND), sequence=sequence)
        )
    keys = [rng.choice("abcdefghz") for _ in range(500)]
    times = np.array([rng.randrange(-5, 210) * SECOND for _ in keys])
    arrays = EventArrays.of(spec, EventColumns.of(spec, events))
    part = next(key for key, names, _ in spec.sequences if "merchant" in names)
    assert any(isinstance(c, pa.DictionaryArray) for c in arrays.sequence_columns(part))
    compacted = compute_as_of(spec, arrays, keys, times).to_arrow(spec)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(as_of, "_compact", lambda column: column)
        plain = compute_as_of(
            spec, EventArrays.of(spec, EventColumns.of(spec, events)), keys, times
        )
    assert compacted.equals(plain.to_arrow(spec))
    assert compacted.column("first_merchant").null_count > 0
    distinct = pa.array([f"id-{i}" for i in range(3000)])
    assert as_of._compact(distinct) is distinct


def test_list_values_round_trip_through_python() -> None:
    for value_type, obj in [
        (m.VALUE_TYPE_INT64_LIST, [1, -(2**63), 2**63 - 1]),
        (m.VALUE_TYPE_FLOAT64_LIST, [0.1, -0.0, 1e300]),
        (m.VALUE_TYPE_STRING_LIST, ["", "a,b", "ü"]),
        (m.VALUE_TYPE_BOOL_LIST, [True, False]),
        (m.VALUE_TYPE_FLOAT64_LIST, []),
        (m.VALUE_TYPE_INT64_LIST, list(range(10_000))),
    ]:
        value = from_python(obj, value_type, "x")
        assert to_python(m.Value.FromString(value.SerializeToString())) == obj
    assert (
        m.Value.FromString(
            from_python([], m.VALUE_TYPE_INT64_LIST, "x").SerializeToString()
        ).WhichOneof("kind")
        == "int64_list_value"
    )
    with pytest.raises(InvalidArgument, match="no nulls"):
        from_python([1, None], m.VALUE_TYPE_INT64_LIST, "x")
    with pytest.raises(InvalidArgument, match="not a finite"):
        from_python([1.0, float("nan")], m.VALUE_TYPE_FLOAT64_LIST, "x")


def _push_view(*fields: m.Field) -> m.FeatureView:
    view = m.FeatureView(
        name="lists", version=1, entity="loan", push_source=m.PushSource(), features=fields
    )
    repository = m.FeatureRepository(
        entities=[m.Entity(name="loan", join_key="loan_id", key_type=m.VALUE_TYPE_STRING)],
        feature_views=[view],
    )
    return validate_repository(repository, []).feature_views[0]


def test_list_expectations_are_checked_where_they_apply() -> None:
    length = m.Expectation(length=m.LengthBounds(min=1, max=3))
    _push_view(m.Field(name="tags", type=m.VALUE_TYPE_STRING_LIST, expectations=[length]))
    with pytest.raises(InvalidArgument, match="a length needs a list type"):
        _push_view(m.Field(name="x", type=m.VALUE_TYPE_STRING, expectations=[length]))
    with pytest.raises(InvalidArgument, match="allowed_values is for scalar fields"):
        allowed = m.Expectation(allowed_values=m.AllowedValues(values=[]))
        _push_view(m.Field(name="x", type=m.VALUE_TYPE_INT64_LIST, expectations=[allowed]))
    with pytest.raises(InvalidArgument, match="length min exceeds max"):
        bad = m.Expectation(length=m.LengthBounds(min=3, max=1))
        _push_view(m.Field(name="x", type=m.VALUE_TYPE_INT64_LIST, expectations=[bad]))
    assert violated(length, from_python([], m.VALUE_TYPE_STRING_LIST, "x"))
    assert not violated(length, m.Value())  # a null list passes (not_null is for that)
    assert violated(length, from_python(["a"] * 4, m.VALUE_TYPE_STRING_LIST, "x"))
    in_range = m.Expectation(range=m.Range(min=0, max=1))
    assert violated(in_range, from_python([0.5, 2.0], m.VALUE_TYPE_FLOAT64_LIST, "x"))
    assert not violated(in_range, from_python([0.5, 1], m.VALUE_TYPE_FLOAT64_LIST, "x"))


def test_pushed_lists_are_coerced_to_the_declared_list_type() -> None:
    empty_ints = m.Value(int64_list_value=m.Int64List())
    assert coerce(empty_ints, m.VALUE_TYPE_STRING_LIST, "x").WhichOneof("kind") == (
        "string_list_value"
    )
    ints = m.Value(int64_list_value=m.Int64List(values=[1, 2]))
    assert to_python(coerce(ints, m.VALUE_TYPE_FLOAT64_LIST, "x")) == [1.0, 2.0]
    with pytest.raises(InvalidArgument, match="STRING_LIST"):
        coerce(ints, m.VALUE_TYPE_STRING_LIST, "x")
    with pytest.raises(InvalidArgument):
        coerce(m.Value(int64_value=1), m.VALUE_TYPE_INT64_LIST, "x")
    assert value_of([1, 2], "x").WhichOneof("kind") == "int64_list_value"
    assert value_of([1, 2.5], "x").WhichOneof("kind") == "float64_list_value"
    with pytest.raises(InvalidArgument, match="never nulls"):
        value_of([1, None], "x")


def test_on_demand_views_take_and_give_scalars_only() -> None:
    lists = m.FeatureView(
        name="lists",
        version=1,
        entity="loan",
        push_source=m.PushSource(),
        features=[
            m.Field(name="tags", type=m.VALUE_TYPE_STRING_LIST),
            m.Field(name="x", type=m.VALUE_TYPE_FLOAT64),
        ],
    )
    code = "def f(row):\n    return {'y': 1.0}\n"

    def repository(inputs: list[str], output: int) -> m.FeatureRepository:
        return m.FeatureRepository(
            entities=[m.Entity(name="loan", join_key="loan_id", key_type=m.VALUE_TYPE_STRING)],
            feature_views=[lists],
            on_demand_views=[
                m.OnDemandFeatureView(
                    name="od",
                    version=1,
                    inputs=inputs,
                    features=[m.Field(name="y", type=output)],
                    source_code=code,
                    function_name="f",
                )
            ],
        )

    validate_repository(repository(["lists:x"], m.VALUE_TYPE_FLOAT64), [])
    with pytest.raises(InvalidArgument, match="is a list; on-demand views read and produce"):
        validate_repository(repository(["lists:tags"], m.VALUE_TYPE_FLOAT64), [])
    with pytest.raises(InvalidArgument, match="is a list; on-demand views read and produce"):
        validate_repository(repository(["lists:x"], m.VALUE_TYPE_FLOAT64_LIST), [])


def test_training_set_ids_of_list_columns_depend_on_content_only() -> None:
    """The same lists under other buffers (garbage under a null slot, a slice, chunks) get
    one id; other lists, or the same elements split otherwise, another."""
    plain = pa.array([[1.0, 2.0], None, [], [3.0]], pa.list_(pa.float64()))
    garbage = pa.ListArray.from_arrays(
        pa.array([0, 2, 5, 5, 6], pa.int32()),
        pa.array([1.0, 2.0, 9.0, 9.0, 9.0, 3.0]),
        mask=pa.array([False, True, False, False]),
    )
    sliced = pa.array([[0.0], [1.0, 2.0], None, [], [3.0]], pa.list_(pa.float64())).slice(1)
    chunked = pa.chunked_array([plain.slice(0, 2), plain.slice(2)])
    ids = {content_id(pa.table({"a": a})) for a in (plain, garbage, sliced, chunked)}
    assert len(ids) == 1
    moved = pa.array([[1.0, 2.0], [], None, [3.0]], pa.list_(pa.float64()))
    split = pa.array([[1.0], [2.0], [], [3.0]], pa.list_(pa.float64()))
    assert content_id(pa.table({"a": moved})) not in ids
    assert content_id(pa.table({"a": split})) not in ids


@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "ok\udfff"])
def test_text_a_state_cannot_hold_rejects_the_event(text: str) -> None:
    spec = agg.spec_of(_standard_view(), "loan_id")
    body = {"loan_id": "a", "at": 1, "amount": 1.0, "merchant": text}
    with pytest.raises(EventRejected) as caught:
        parse_event(spec, body, arrival_us=SECOND, sequence=1)
    assert caught.value.reason == "bad_text:merchant"
    body["merchant"] = "ünïcode ✓"
    assert parse_event(spec, body, arrival_us=SECOND, sequence=1).parts


def test_string_lists_refuse_nul() -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        from_python(["a", "b\x00"], m.VALUE_TYPE_STRING_LIST, "x")
    pushed = m.Value(string_list_value=m.StringList(values=["\x00"]))
    with pytest.raises(InvalidArgument, match="NUL"):
        coerce(pushed, m.VALUE_TYPE_STRING_LIST, "x")


def test_a_subset_of_cached_events_is_ordered_as_if_sorted_afresh() -> None:
    """EventArrays.take derives a subset's order from the whole's (the parsed-event cache
    sorts once per copy); it must be exactly the subset's own stable sort, ties included."""
    rng = np.random.default_rng(3)
    count = 2_000
    whole = EventArrays(
        entity_keys=pa.array([f"e{k}" for k in rng.integers(0, 30, count)]),
        event_us=rng.integers(0, 50, count),
        arrival_us=rng.integers(0, 5, count),
        sequence=rng.integers(0, 3, count),  # many exact ties
        values={},
        hashes={},
        sequences={},
    )
    whole.sorted()
    for _ in range(5):
        positions = np.flatnonzero(rng.random(count) < 0.4)
        subset = whole.take(positions)
        codes, dictionary, order = subset.sorted()
        assert dictionary.take(pa.array(codes)).equals(subset.entity_keys)
        fresh = np.lexsort((subset.sequence, subset.arrival_us, subset.event_us, codes))
        assert np.array_equal(order, fresh)
