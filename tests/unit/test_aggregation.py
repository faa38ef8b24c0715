"""Tiles of streaming aggregations: window math, exact merges, parsing, point-in-time (pure)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.domain.streaming.as_of import EventColumns, compute_as_of
from services.feature_store.domain.streaming.backfill import backfill_tiles
from services.feature_store.domain.streaming.events import (
    EventRejected,
    decode_payload,
    parse_event,
)
from services.feature_store.store.stream_events import RawEvent
from tests.support.time_axes import AXES, time_axis

MINUTE = 60_000_000
HOUR = 60 * MINUTE
FUNCTIONS = (agg.COUNT, agg.SUM, agg.MEAN, agg.MIN, agg.MAX, agg.LAST)


def _spec(
    windows: tuple[int, ...] = (10 * MINUTE, HOUR),
    *,
    tile: int = MINUTE,
    lateness: int = 10 * MINUTE,
    ttl: int = 0,
) -> agg.StreamViewSpec:
    aggregations = tuple(
        agg.WindowAggregation(f"{f}_{w}", f, "" if f == agg.COUNT else "amount", w)
        for w in windows
        for f in FUNCTIONS
    )
    return agg.StreamViewSpec(
        "v", 1, "payments", "loan_id", "at", tile, lateness, aggregations, ttl
    )


def _us(text: str) -> int:
    return agg.to_us(datetime.fromisoformat(text))


def _event(key: str, at: int, amount: str | None, *, arrival: int | None = None, seq: int = 0):
    values = {} if amount is None else {"amount": Decimal(amount)}
    return agg.StreamEvent(key, at, at if arrival is None else arrival, seq, values)


def _read(spec: agg.StreamViewSpec, events, at: int) -> dict[str, object]:
    tiles = agg.build_tiles(spec, events)
    result = agg.combine(spec, [(start, s) for (_, start), s in tiles.items()], at)
    return {a.name: v for a, v in zip(spec.aggregations, result.values, strict=True)}


def test_tiles_floor_event_times_also_before_the_epoch() -> None:
    assert agg.floor_tile(_us("2026-03-01T10:29:59.999999+00:00"), MINUTE) == _us(
        "2026-03-01T10:29:00+00:00"
    )
    assert agg.floor_tile(-1, MINUTE) == -MINUTE
    assert agg.floor_tile(-MINUTE, MINUTE) == -MINUTE


def test_a_window_is_relative_to_the_time_it_is_read() -> None:
    spec = _spec((HOUR,))
    events = [
        _event("L1", _us("2026-03-01T09:29:30+00:00"), "1"),
        _event("L1", _us("2026-03-01T09:31:00+00:00"), "2"),
        _event("L1", _us("2026-03-01T10:15:00+00:00"), "4"),
    ]
    # Read at 10:30 the hour covers the tiles 09:31 .. 10:30: the 9:29 event is out.
    at_1030 = _read(spec, events, _us("2026-03-01T10:30:10+00:00"))
    assert at_1030[f"count_{HOUR}"] == 2
    assert at_1030[f"sum_{HOUR}"] == 6.0
    # Nothing arrived since, yet at 11:10 only the 10:15 event is in the hour.
    at_1110 = _read(spec, events, _us("2026-03-01T11:10:00+00:00"))
    assert at_1110[f"count_{HOUR}"] == 1
    assert at_1110[f"last_{HOUR}"] == 4.0
    assert _read(spec, events, _us("2026-03-01T11:20:00+00:00"))[f"count_{HOUR}"] is None
    # Precision is one tile: at 10:30:59 the window still starts at 09:31:00.
    assert agg.window_start(_us("2026-03-01T10:30:59+00:00"), HOUR, MINUTE) == _us(
        "2026-03-01T09:31:00+00:00"
    )


def test_empty_windows_count_zero_and_have_no_mean_min_max_or_last() -> None:
    spec = _spec((10 * MINUTE, HOUR))
    events = [_event("L1", _us("2026-03-01T10:00:00+00:00"), "5")]
    values = _read(spec, events, _us("2026-03-01T10:30:00+00:00"))
    w = 10 * MINUTE
    assert [values[f"{f}_{w}"] for f in FUNCTIONS] == [0, 0.0, None, None, None, None]
    assert [values[f"{f}_{HOUR}"] for f in FUNCTIONS] == [1, 5.0, 5.0, 5.0, 5.0, 5.0]
    nothing = agg.combine(spec, [], _us("2026-03-01T10:30:00+00:00"))
    assert nothing.latest_us is None and set(nothing.values) == {None}


def test_events_without_the_column_count_but_carry_no_value() -> None:
    spec = _spec((HOUR,))
    at = _us("2026-03-01T10:00:00+00:00")
    values = _read(spec, [_event("L1", at, "3"), _event("L1", at + 1, None)], at + MINUTE)
    assert values[f"count_{HOUR}"] == 2
    assert values[f"mean_{HOUR}"] == 3.0
    assert values[f"last_{HOUR}"] == 3.0


def test_last_breaks_ties_by_arrival_then_stream_sequence() -> None:
    spec = _spec((HOUR,))
    at = _us("2026-03-01T10:00:00+00:00")
    events = [
        _event("L1", at, "1", arrival=at + 5, seq=9),
        _event("L1", at, "2", arrival=at + 7, seq=3),  # same event time, known later: wins
        _event("L1", at - 1, "3", arrival=at + 99, seq=99),  # arrived last, but older
    ]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        assert _read(spec, [events[i] for i in order], at + MINUTE)[f"last_{HOUR}"] == 2.0
    tied = [_event("L1", at, "1", seq=4), _event("L1", at, "2", seq=5)]
    assert _read(spec, tied[::-1], at + MINUTE)[f"last_{HOUR}"] == 2.0


def test_merges_are_exact_so_any_order_or_grouping_gives_identical_tiles() -> None:
    spec = _spec((10 * MINUTE, HOUR, 24 * HOUR))
    rng = random.Random(3)
    start = _us("2026-03-01T00:00:00+00:00")
    events = [
        _event(
            rng.choice(["L1", "L2"]),
            start + rng.randrange(24 * HOUR),
            repr(rng.choice([0.1, 0.2, 0.3, 1e300, -1e300, 1e-300, rng.uniform(-1e9, 1e9)])),
            seq=i,
        )
        for i in range(500)
    ]
    reference = {k: agg.encode_state(s) for k, s in agg.build_tiles(spec, events).items()}
    for _ in range(5):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert {k: agg.encode_state(s) for k, s in agg.build_tiles(spec, shuffled).items()} == (
            reference
        )
    # Tiles merged in any grouping (as a window read does) equal one pass over all events.
    halves = [agg.build_tiles(spec, events[:250]), agg.build_tiles(spec, events[250:])]
    for key in reference:
        merged = agg.TileState()
        for half in halves[::-1]:
            if key in half:
                merged.merge(half[key])
        assert agg.encode_state(merged) == reference[key]


def test_sums_are_exact_decimals_not_float_accumulations() -> None:
    spec = _spec((HOUR,))
    at = _us("2026-03-01T10:00:00+00:00")
    tenths = [_event("L1", at, repr(x)) for x in (0.1, 0.2, 0.3)]
    assert 0.1 + 0.2 + 0.3 != 0.6
    assert _read(spec, tenths, at)[f"sum_{HOUR}"] == 0.6
    assert _read(spec, tenths, at)[f"mean_{HOUR}"] == 0.2
    huge = [_event("L1", at, x) for x in ("1e300", "1e-300", "-1e300")]
    assert _read(spec, huge, at)[f"sum_{HOUR}"] == 1e-300


def test_states_round_trip_through_their_stored_form() -> None:
    spec = _spec()
    at = _us("2026-03-01T10:00:00+00:00")
    tiles = agg.build_tiles(
        spec, [_event("L1", at, "1.10", seq=1), _event("L1", at + 5, None), _event("L1", at, "-2")]
    )
    for state in tiles.values():
        assert agg.decode_state(agg.encode_state(state)) == state
    assert agg.decode_state(agg.EMPTY_STATE) == agg.TileState()


def test_spec_of_a_validated_view() -> None:
    view = m.FeatureView(
        name="pay",
        version=2,
        stream_source=m.StreamSource(source="payments", event_time_field="paid_at"),
        aggregations=[
            m.Aggregation(
                column="x",
                function=m.AGGREGATION_FUNCTION_COUNT,
                window=Duration(seconds=3600),
                name="n",
            ),
            m.Aggregation(
                column="amount",
                function=m.AGGREGATION_FUNCTION_MEAN,
                window=Duration(seconds=600),
                name="avg",
            ),
        ],
        tile_size=Duration(seconds=60),
        allowed_lateness=Duration(seconds=120),
    )
    spec = agg.spec_of(view, "loan_id")
    assert (spec.entity_field, spec.tile_us, spec.lateness_us) == ("loan_id", MINUTE, 2 * MINUTE)
    assert spec.columns == ("amount",)  # count reads no column
    assert spec.max_window_us == HOUR


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"at": "2026-03-01T10:00:00Z", "amount": 1}, "missing_entity"),
        ({"loan_id": "", "at": "2026-03-01T10:00:00Z"}, "bad_entity"),
        ({"loan_id": True, "at": "2026-03-01T10:00:00Z"}, "bad_entity"),
        ({"loan_id": "k" * 1025, "at": "2026-03-01T10:00:00Z"}, "bad_entity"),
        ({"loan_id": "L1"}, "missing_event_time"),
        ({"loan_id": "L1", "at": "2026-03-01 10:00"}, "bad_event_time"),
        ({"loan_id": "L1", "at": "soon"}, "bad_event_time"),
        ({"loan_id": "L1", "at": [1]}, "bad_event_time"),
        ({"loan_id": "L1", "at": "2026-03-01T10:00:00Z", "amount": "1.5"}, "not_numeric:amount"),
        ({"loan_id": "L1", "at": "2026-03-01T10:00:00Z", "amount": False}, "not_numeric:amount"),
        (
            {"loan_id": "L1", "at": "2026-03-01T10:00:00Z", "amount": float("nan")},
            "not_numeric:amount",
        ),
        ({"loan_id": "L1", "at": "2026-03-01T09:49:59Z"}, "late"),
        ({"loan_id": "L1", "at": "2026-03-01T10:10:01Z"}, "future"),
    ],
)
def test_events_a_view_cannot_use_are_rejected_with_a_reason(payload: dict, reason: str) -> None:
    with pytest.raises(EventRejected) as rejected:
        parse_event(_spec(), payload, arrival_us=_us("2026-03-01T10:00:00+00:00"), sequence=1)
    assert rejected.value.reason == reason


def test_events_parse_rfc3339_or_epoch_seconds_and_int_keys() -> None:
    arrival = _us("2026-03-01T10:00:00+00:00")
    spec = _spec()
    text = parse_event(
        spec,
        {"loan_id": 42, "at": "2026-03-01T11:59:30.5+02:00", "amount": 12},
        arrival_us=arrival,
        sequence=7,
    )
    epoch = parse_event(
        spec,
        {"loan_id": "42", "at": datetime(2026, 3, 1, 9, 59, 30, 500000, UTC).timestamp()},
        arrival_us=arrival,
        sequence=8,
    )
    assert text.entity_key == epoch.entity_key == "42"
    assert text.event_us == epoch.event_us == arrival - 29_500_000
    assert text.values == {"amount": Decimal(12)} and epoch.values == {}
    assert parse_event(
        spec, {"loan_id": "L", "at": 0, "amount": 0.1}, arrival_us=0, sequence=0
    ).values == {"amount": Decimal("0.1")}


@pytest.mark.parametrize(("data", "reason"), [(b"\xff{", "not_json"), (b"[1]", "not_object")])
def test_payloads_must_be_json_objects(data: bytes, reason: str) -> None:
    with pytest.raises(EventRejected) as rejected:
        decode_payload(data)
    assert rejected.value.reason == reason


def test_backfill_of_raw_events_equals_streaming_them_one_by_one() -> None:
    spec = _spec((10 * MINUTE, HOUR), lateness=HOUR)
    rng = random.Random(5)
    start = _us("2026-03-01T10:00:00+00:00")
    raw = []
    for sequence in range(200):
        at = start + rng.randrange(2 * HOUR)
        body: dict[str, object] = {"loan_id": rng.choice(["A", "B"]), "at": at / 1e6}
        if sequence % 7:
            body["amount"] = rng.uniform(-10, 10)
        arrival = at + rng.randrange(int(1.5 * HOUR))  # some too late
        raw.append(
            RawEvent(uuid.uuid4(), sequence, agg.from_us(arrival), json.dumps(body).encode())
        )
    streamed: dict = {}
    for event in raw:  # what the consumer does: one event at a time, in arrival order
        try:
            parsed = parse_event(
                spec,
                decode_payload(event.payload),
                arrival_us=agg.to_us(event.arrival_time),
                sequence=event.stream_sequence,
            )
        except EventRejected:
            continue
        key = agg.tile_key(spec, parsed)
        state = agg.decode_state(streamed.get(key, agg.EMPTY_STATE))
        state.add(parsed)
        streamed[key] = agg.encode_state(state)

    backfilled, result = backfill_tiles(spec, reversed(raw))

    assert {k: agg.encode_state(s) for k, s in backfilled.items()} == streamed
    assert result.events_read == 200 and result.rejected["late"] > 0
    assert result.events_used + sum(result.rejected.values()) == 200


def _brute_force(spec: agg.StreamViewSpec, events, key: str, at: int) -> agg.WindowValues:
    """An online read at ``at`` over the events known then."""
    known = [e for e in events if e.entity_key == key and e.arrival_us <= at]
    return agg.combine(spec, [(s, t) for (_, s), t in agg.build_tiles(spec, known).items()], at)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("seed", range(12))
def test_point_in_time_values_equal_an_online_read_at_each_label_time(seed: int, axis: str) -> None:
    rng = random.Random(seed)
    tile = rng.choice([1, 7, 60]) * 1_000_000
    lateness = rng.choice([0, 5, 600]) * 1_000_000
    windows = tuple(sorted({tile * rng.choice([1, 3, 30]) for _ in range(3)}))
    spec = _spec(windows, tile=tile, lateness=lateness, ttl=rng.choice([0, 300_000_000]))
    events = []
    for sequence in range(rng.randint(0, 400)):
        at = rng.randrange(3000) * 1_000_000 + rng.randrange(1_000_000)
        skew = rng.randint(-lateness // 4, lateness) if lateness else 0
        amount = None if rng.random() < 0.2 else repr(rng.choice([0.1, 1e15, rng.uniform(-9, 9)]))
        events.append(_event(rng.choice("abc"), at, amount, arrival=at + skew, seq=sequence))
    keys = [rng.choice("abcd") for _ in range(300)]
    times = [rng.randrange(-10, 3100) * 1_000_000 + rng.randrange(1_000_000) for _ in keys]

    with time_axis(axis):
        result = compute_as_of(spec, EventColumns.of(spec, events), keys, np.array(times))

    for i, (key, at) in enumerate(zip(keys, times, strict=True)):
        expected = _brute_force(spec, events, key, at)
        assert bool(result.found[i]) == (expected.latest_us is not None)
        expired = (
            expected.latest_us is not None and spec.ttl_us and at - expected.latest_us > spec.ttl_us
        )
        for aggregation, value in zip(spec.aggregations, expected.values, strict=True):
            got = (
                result.values[aggregation.name][i].item()
                if result.valid[aggregation.name][i]
                else None
            )
            assert got == (None if expired else value), (aggregation.name, key, at)
            assert type(got) is type(None if expired else value)


def test_point_in_time_leaves_out_events_not_yet_known() -> None:
    spec = _spec((HOUR,), lateness=HOUR)
    at = _us("2026-03-01T10:00:00+00:00")
    events = [
        _event("L1", at, "1"),
        _event("L1", at + MINUTE, "2", arrival=at + 30 * MINUTE),  # known half an hour late
    ]
    label_times = np.array([at + 10 * MINUTE, at + 31 * MINUTE])
    result = compute_as_of(spec, EventColumns.of(spec, events), ["L1", "L1"], label_times)
    assert result.values[f"count_{HOUR}"].tolist() == [1, 2]
    assert result.values[f"last_{HOUR}"].tolist() == [1.0, 2.0]
    assert result.values[f"sum_{HOUR}"].tolist() == [1.0, 3.0]
    table = result.to_arrow(spec)
    assert table.column("event_time").to_pylist() == [
        agg.from_us(at),
        agg.from_us(at + MINUTE),
    ]
    assert table.schema.field(f"count_{HOUR}").type == "int64"


def test_point_in_time_with_no_events_is_all_null() -> None:
    spec = _spec()
    result = compute_as_of(spec, EventColumns.of(spec, []), ["L1"], np.array([0]))
    table = result.to_arrow(spec)
    assert set(table.to_pylist()[0].values()) == {None}


def _spanned(spans: list[agg.Span], states: dict[agg.TileKey, agg.TileState]):
    """(start, state) of the stored states whose start lies in one of ``spans``."""
    return [
        (start, state)
        for (_, start), state in states.items()
        if any(first <= start <= last for first, last in spans)
    ]


@pytest.mark.parametrize("tile", [MINUTE, 5 * MINUTE])
def test_reads_from_rollups_and_edge_tiles_equal_reads_from_tiles(tile: int) -> None:
    """A window read from rollups (ADR 0011) has exactly the value it has from tiles."""
    rng = random.Random(11)
    spec = _spec((10 * MINUTE, 90 * MINUTE, 26 * HOUR, 7 * 24 * HOUR), tile=tile)
    base = _us("2026-11-20T00:00:00+00:00")
    events = [
        _event("L1", base + rng.randrange(8 * 24 * HOUR), str(rng.uniform(-1e3, 1e3)), seq=i)
        for i in range(3000)
    ]
    built = agg.build_tiles(spec, events)
    rollups = agg.build_rollups(spec, built)
    assert len(rollups) < len(built)
    for _ in range(60):
        read_us = base + rng.randrange(9 * 24 * HOUR)
        [(first, last)], none = agg.read_spans(spec, read_us, rollups=False)
        tile_spans, rollup_spans = agg.read_spans(spec, read_us, rollups=True)
        assert none == [] and rollup_spans  # 7 days hold whole rollups
        for start, _ in _spanned(tile_spans, built) + _spanned(rollup_spans, rollups):
            assert first <= start <= last
        from_tiles = agg.combine(spec, _spanned([(first, last)], built), read_us)
        mixed = _spanned(tile_spans, built) + _spanned(rollup_spans, rollups)
        assert agg.combine(spec, mixed, read_us) == from_tiles


def test_read_spans_cover_the_largest_window_once() -> None:
    spec = _spec((10 * MINUTE, 90 * MINUTE, 26 * HOUR))
    read_us = _us("2026-11-26T10:30:40+00:00")
    [(first, last)], _ = agg.read_spans(spec, read_us, rollups=False)
    tile_spans, rollup_spans = agg.read_spans(spec, read_us, rollups=True)
    covered = sorted(
        [start for a, b in tile_spans for start in range(a, b + 1, MINUTE)]
        + [
            start
            for a, b in rollup_spans
            for rollup in range(a, b + 1, spec.rollup_us)
            for start in range(rollup, rollup + spec.rollup_us, MINUTE)
        ]
    )
    assert covered == list(range(first, last + 1, MINUTE))
    assert all((b - a) % spec.rollup_us == 0 and a % spec.rollup_us == 0 for a, b in rollup_spans)


def test_only_views_with_a_window_past_240_tiles_keep_rollups() -> None:
    assert not _spec((10 * MINUTE, 4 * HOUR)).rolls_up  # 240 one-minute tiles: cheap to read
    assert _spec((10 * MINUTE, 4 * HOUR + MINUTE)).rolls_up
    assert not _spec((HOUR, 20 * HOUR), tile=5 * MINUTE).rolls_up


def test_views_of_last_n_windows_only_read_newest_tiles_and_keep_no_rollups() -> None:
    def last_n(window: int, n: int, *, offset: int = 0) -> agg.WindowAggregation:
        return agg.WindowAggregation(
            f"last_{n}_{window}", agg.LAST_N, "amount", window, n=n, offset_us=offset
        )

    def spec(*aggregations: agg.WindowAggregation) -> agg.StreamViewSpec:
        return agg.StreamViewSpec("v", 1, "s", "loan_id", "at", MINUTE, MINUTE, aggregations)

    sequences = spec(last_n(24 * HOUR, 50), last_n(HOUR, 70))
    assert sequences.newest_tiles == 70 and not sequences.rolls_up
    lifetime = agg.WindowAggregation("ever", agg.LAST_N, "amount", 0, n=9, lifetime=True)
    assert spec(last_n(24 * HOUR, 5), lifetime).newest_tiles == 5  # lifetime reads its own state
    # An offset window's newest tiles are not the read's; any other function needs them all.
    assert spec(last_n(24 * HOUR, 5, offset=HOUR)).newest_tiles == 0
    assert spec(last_n(24 * HOUR, 5, offset=HOUR)).rolls_up
    mixed = spec(last_n(24 * HOUR, 5), agg.WindowAggregation("n", agg.COUNT, "", 24 * HOUR))
    assert mixed.newest_tiles == 0 and mixed.rolls_up
