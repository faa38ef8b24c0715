"""List features and FIRST / LAST_N / FIRST_N end to end (ADR 0021), real Postgres + NATS.

List values (nulls, empty lists, long lists) round-trip through push, materialize, online
reads and training sets (Arrow list columns). Sequence aggregations streamed through
JetStream equal the same definition filled by backfill, online, offline (as-of and
GetHistoricalFeatures) and a brute force, for random event orders with late events.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pyarrow as pa
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    BoolList,
    Entity,
    FeatureView,
    Field,
    Float64,
    Float64List,
    Int64,
    Int64List,
    Length,
    PushSource,
    Range,
    StreamSource,
    String,
    StringList,
    repository_of,
)
from services.feature_store.app.streaming.history import stream_aggregates_as_of
from services.feature_store.app.streaming.ingest import ingest_streams
from services.feature_store.store import tiles
from tests.feature_store.hardening_helpers import arrow_ipc, outcome, training_set
from tests.feature_store.helpers import column, python, suffix
from tests.feature_store.test_streaming import _publish, _wait_for_events

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LONG = [i * 0.25 for i in range(5000)]
PROPERTY = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""Real servers: few examples, the same on every run (about 3 s each)."""


async def _apply(features: FeatureStoreStub, *objects: object) -> None:
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of(list(objects)))
    )


async def _online(
    features: FeatureStoreStub, references: list[str], keys: list[str]
) -> tuple[list[str], list[list[object]], list[list[int]]]:
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=references), entities={"loan_id": column(keys)}
        )
    )
    return (
        list(response.feature_names),
        [[python(v) for v in r.values] for r in response.results],
        [list(r.statuses) for r in response.results],
    )


async def _training(
    features: FeatureStoreStub, references: list[str], labels: list[tuple[str, datetime]]
) -> pa.Table:
    table = pa.table(
        {
            "loan_id": [k for k, _ in labels],
            "event_time": pa.array([t for _, t in labels], pa.timestamp("us", tz="UTC")),
        }
    )
    _, got = await training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=references), entity_rows_arrow=arrow_ipc(table)
        ),
    )
    return got


_ROWS = [  # (loan, ids, scores, tags, flags): nulls, empty lists, long lists
    ("L1", [1, -(2**63), 2**63 - 1], [0.5, -0.0, 1e300], ["a", "", 'q"u,o{t}e'], [True]),
    ("L2", [], [], [], []),
    ("L3", None, None, None, None),
    (
        "L4",
        list(range(3000)),
        LONG,
        [f"t{i}" for i in range(2000)],
        [i % 3 == 0 for i in range(999)],
    ),
]


def _list_view(name: str, loan: Entity, source: object) -> FeatureView:
    return FeatureView(
        name,
        entity=loan,
        source=source,  # type: ignore[arg-type]
        features=[
            Field("ids", Int64List),
            Field("scores", Float64List, [Length(max=4000), Range(min=-1e301)]),
            Field("tags", StringList, [Length(min=1)]),
            Field("flags", BoolList),
        ],
    )


async def test_list_features_round_trip_through_push_online_and_training_sets(
    features: FeatureStoreStub,
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = f"lists_{s}"
    await _apply(features, loan, _list_view(view, loan, PushSource()))
    pushed = await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=view,
            columns={
                "loan_id": column([r[0] for r in _ROWS]),
                "event_time": column([T0] * len(_ROWS)),
                "ids": column([r[1] for r in _ROWS]),
                "scores": column([r[2] for r in _ROWS]),
                "tags": column([r[3] for r in _ROWS]),
                "flags": column([r[4] for r in _ROWS]),
            },
        )
    )
    assert pushed.rows_written == len(_ROWS)
    names, online, statuses = await _online(features, [f"{view}:*"], [r[0] for r in _ROWS])
    assert names == [f"{view}:{f}" for f in ("ids", "scores", "tags", "flags")]
    assert online == [list(r[1:]) for r in _ROWS]
    assert all(status == [m.FEATURE_STATUS_PRESENT] * 4 for status in statuses)

    training = await _training(
        features,
        [f"{view}:*"],
        [(r[0], datetime.now(UTC)) for r in _ROWS],  # known since the push
    )
    assert training.schema.field(f"{view}:ids").type == pa.list_(pa.int64())
    assert training.schema.field(f"{view}:scores").type == pa.list_(pa.float64())
    assert training.schema.field(f"{view}:tags").type == pa.list_(pa.string())
    assert training.schema.field(f"{view}:flags").type == pa.list_(pa.bool_())
    for row, expected in zip(training.to_pylist(), _ROWS, strict=True):
        got = [row[f"{view}:{f}"] for f in ("ids", "scores", "tags", "flags")]
        # == not repr: DuckDB's arg_max (the offline timeline) turns -0.0 into 0.0, for
        # scalar doubles as for lists; online keeps it.
        assert got == list(expected[1:])

    stats = await features.GetFeatureStatistics(rr.GetFeatureStatisticsRequest(feature_view=view))
    lengths = {f.feature: f for f in stats.features}
    assert (lengths["scores"].count, lengths["scores"].nulls) == (3, 1)
    assert (lengths["scores"].min, lengths["scores"].max) == (0.0, 5000.0)  # of lengths
    # tags of L2 is empty (length < 1) and L4's 5000 scores exceed 4000 (kept, counted)
    assert stats.violations == 2

    refused = await outcome(
        features.PushFeatures(
            rr.PushFeaturesRequest(
                feature_view=view,
                columns={
                    "loan_id": column(["L1", "L2"]),
                    "event_time": column([T0, T0]),
                    "tags": column([["a"], [1, 2]]),  # integers for a string list
                },
            )
        )
    )
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tags of row 1" in (refused.details() or "")


async def test_list_features_materialize_from_postgres_arrays(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    table = f"lists_{s}"
    await db_pool.execute(
        f"""CREATE TABLE public.{table} (loan_id text, at timestamptz, ids bigint[],
                scores double precision[], tags text[], flags boolean[])"""
    )
    await db_pool.executemany(
        f"INSERT INTO public.{table} VALUES ($1, $2, $3, $4, $5, $6)",
        [(r[0], T0, *r[1:]) for r in _ROWS],
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = f"lv_{s}"
    await _apply(
        features,
        loan,
        _list_view(view, loan, BatchSource(f"public.{table}", event_time_column="at")),
    )
    progress = [
        r.progress async for r in features.Materialize(rr.MaterializeRequest(feature_view=view))
    ]
    assert progress[-1].done and progress[-1].rows_written == len(_ROWS)
    _, online, _ = await _online(features, [f"{view}:*"], [r[0] for r in _ROWS])
    assert [[repr(v) for v in row] for row in online] == [[repr(v) for v in r[1:]] for r in _ROWS]
    training = await _training(features, [f"{view}:*"], [(r[0], T0) for r in _ROWS])
    for row, expected in zip(training.to_pylist(), _ROWS, strict=True):
        assert [row[f"{view}:{f}"] for f in ("ids", "scores", "tags", "flags")] == list(
            expected[1:]
        )

    # An array with a NULL element cannot be a list feature: the run says which column.
    await db_pool.execute(
        f"INSERT INTO public.{table} VALUES ('L5', $1, ARRAY[1, NULL]::bigint[], NULL, NULL, NULL)",
        T0 + timedelta(days=1),
    )
    failed = await outcome(_drain(features.Materialize(rr.MaterializeRequest(feature_view=view))))
    assert failed is not None and failed.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ids" in (failed.details() or "") and "no nulls" in (failed.details() or "")


async def _drain(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        pass


async def _publish_history(
    js: JetStreamContext,
    subject: str,
    history: list[dict[str, object]],
    order: random.Random,
    now: datetime,
) -> None:
    """Each event with ``at`` = ``now`` - its ``age`` (seconds), in a shuffled order: old
    events arrive late, after newer ones."""
    shuffled = list(history)
    order.shuffle(shuffled)
    for event in shuffled:
        body = {k: v for k, v in event.items() if k != "age"}
        body["at"] = (now - timedelta(seconds=event["age"])).isoformat()  # type: ignore[arg-type]
        await _publish(js, subject, body)


def _sequence_view(name: str, source: str, loan: Entity) -> FeatureView:
    return FeatureView(
        name,
        entity=loan,
        source=StreamSource(source, event_time_field="at"),
        aggregations=[
            Aggregation(
                "",
                "last_n",
                timedelta(hours=1),
                "recent",
                n=4,
                columns={"amount": Float64, "merchant": String},
            ),
            Aggregation("amount", "last_n", timedelta(hours=3), "amounts_3h", n=50),
            Aggregation(
                "merchant", "first", timedelta(hours=1), "first_merchant", value_type=String
            ),
            Aggregation("seq", "first_n", timedelta(hours=3), "first_seqs", n=3, value_type=Int64),
            Aggregation("seq", "last_n", None, "seqs_ever", n=2, value_type=Int64, lifetime=True),
        ],
        allowed_lateness=timedelta(hours=6),
    )


# Event ages in seconds, kept clear of the 1 h and 3 h window edges (reads a few seconds
# apart see the same events); the oldest are outside every window but the lifetime.
_AGES = st.sampled_from([5, 40, 300, 1200, 2400, 3000, 4000, 7000, 10_000, 14_000, 20_000])


@st.composite
def _histories(draw: st.DrawFn) -> list[dict[str, object]]:
    events = []
    for seq in range(draw(st.integers(1, 30))):
        event: dict[str, object] = {
            "loan_id": draw(st.sampled_from(["L1", "L2"])),
            "age": draw(_AGES) + seq * 0.001,  # distinct event times
            "seq": seq,
        }
        if draw(st.integers(0, 5)):
            event["amount"] = draw(st.floats(-1e6, 1e6))
        if draw(st.integers(0, 5)):
            event["merchant"] = draw(st.sampled_from(["m1", "m2", "", "ü"]))
        events.append(event)
    return events


def _brute(events: list[dict[str, object]], key: str) -> dict[str, object]:
    """Each feature from the events themselves: in the window, carrying the columns,
    ordered by event time (oldest first)."""

    def kept(within: float | None, columns: tuple[str, ...]) -> list[dict[str, object]]:
        chosen = [
            e
            for e in events
            if e["loan_id"] == key
            and (within is None or e["age"] < within)  # type: ignore[operator]
            and all(e.get(c) is not None for c in columns)
        ]
        return sorted(chosen, key=lambda e: -e["age"])  # type: ignore[operator]

    recent = kept(3600, ("amount", "merchant"))[-4:]
    first = kept(3600, ("merchant",))
    return {
        "recent__amount": [e["amount"] + 0.0 for e in recent],  # type: ignore[operator]
        "recent__merchant": [e["merchant"] for e in recent],
        "amounts_3h": [e["amount"] + 0.0 for e in kept(3 * 3600, ("amount",))[-50:]],  # type: ignore[operator]
        "first_merchant": first[0]["merchant"] if first else None,
        "first_seqs": [e["seq"] for e in kept(3 * 3600, ("seq",))[:3]],
        "seqs_ever": [e["seq"] for e in kept(None, ("seq",))[-2:]],
    }


_AGE_LIST = [5, 40, 300, 1200, 2400, 3000, 4000, 7000, 10_000, 14_000, 20_000]
_RICH = [
    {
        "loan_id": "L2" if i % 3 == 0 else "L1",
        "age": _AGE_LIST[i % len(_AGE_LIST)] + i * 0.001,
        "seq": i,
        **({} if i % 7 == 0 else {"amount": i * 1.5 - 7}),
        **({} if i % 5 == 0 else {"merchant": ["m1", "m2", "", "ü"][i % 4]}),
    }
    for i in range(40)
]
"""Every window full past n, events left out for a missing column, late arrivals."""


@PROPERTY
@given(history=_histories(), order=st.randoms(use_true_random=False))
@example(history=_RICH, order=random.Random(7))
async def test_sequences_streamed_equal_backfilled_online_offline_and_brute_force(
    features: FeatureStoreStub,
    js: JetStreamContext,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
    history: list[dict[str, object]],
    order: random.Random,
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, loan, _sequence_view(f"live_{s}", f"src_{s}", loan))
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    now = datetime.now(UTC)
    await _publish_history(js, subject, history, order, now)
    await _wait_for_events(db_pool, f"live_{s}", len(history))

    await _apply(features, _sequence_view(f"back_{s}", f"src_{s}", loan))
    result = await features.BackfillStreamView(
        rr.BackfillStreamViewRequest(feature_view=f"back_{s}")
    )
    assert result.events_used == len(history) and not result.rejected
    for read in (tiles.all_tiles, tiles.all_lifetimes):
        assert await read(db_pool, f"back_{s}", 1) == await read(db_pool, f"live_{s}", 1)

    keys = ["L1", "L2", "L9"]
    names, online, statuses = await _online(features, [f"live_{s}:*", f"back_{s}:*"], keys)
    half = len(names) // 2
    features_of = [n.split(":")[1] for n in names[:half]]
    applied = (
        await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"live_{s}"))
    ).feature_view
    read_at = datetime.now(UTC)
    offline = await stream_aggregates_as_of(db_pool, applied, "loan_id", keys, [read_at] * 3)
    training = await _training(features, [f"live_{s}:*"], [(k, read_at) for k in keys])
    for i, key in enumerate(keys):
        assert online[i][:half] == online[i][half:]  # streamed == backfilled
        got = dict(zip(features_of, online[i][:half], strict=True))
        as_of = offline.slice(i, 1).to_pylist()[0]
        trained = training.slice(i, 1).to_pylist()[0]
        for name, value in got.items():
            assert repr(as_of[name]) == repr(value), (key, name)
            assert repr(trained[f"live_{s}:{name}"]) == repr(value), (key, name)
        if not any(e["loan_id"] == key for e in history):
            assert set(statuses[i]) == {m.FEATURE_STATUS_NOT_FOUND}
            continue
        brute = _brute(history, key)
        if history is _RICH and key == "L1":  # the windows hold more than n
            assert len(got["recent__amount"]) == 4 and len(got["amounts_3h"]) > 10  # type: ignore[arg-type]
            assert len(got["first_seqs"]) == 3 and len(got["seqs_ever"]) == 2  # type: ignore[arg-type]
        for name, wanted in brute.items():
            assert repr(got[name]) == repr(wanted), (key, name, got[name], wanted)
        # the event times run oldest first, one per element, as epoch seconds
        times = got["recent__event_time"]
        assert len(times) == len(got["recent__amount"]) and times == sorted(times)  # type: ignore[arg-type]
        assert all(abs(t - (now.timestamp() - 3600)) < 3600 for t in times)  # type: ignore[union-attr]


async def test_sequence_features_are_served_as_list_types(features: FeatureStoreStub) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, loan, _sequence_view(f"typed_{s}", f"src_{s}", loan))
    view = (await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"typed_{s}"))).feature_view
    assert [(f.name, m.ValueType.Name(f.type)) for f in view.features] == [
        ("recent__amount", "VALUE_TYPE_FLOAT64_LIST"),
        ("recent__merchant", "VALUE_TYPE_STRING_LIST"),
        ("recent__event_time", "VALUE_TYPE_FLOAT64_LIST"),
        ("amounts_3h", "VALUE_TYPE_FLOAT64_LIST"),
        ("first_merchant", "VALUE_TYPE_STRING"),
        ("first_seqs", "VALUE_TYPE_INT64_LIST"),
        ("seqs_ever", "VALUE_TYPE_INT64_LIST"),
    ]
    await asyncio.sleep(0)


def _newest_first_view(name: str, source: str, loan: Entity) -> FeatureView:
    """LAST_N windows only, one long enough that any other view would keep rollups."""
    return FeatureView(
        name,
        entity=loan,
        source=StreamSource(source, event_time_field="at"),
        aggregations=[
            Aggregation(
                "",
                "last_n",
                timedelta(days=1),
                "recent",
                n=3,
                columns={"amount": Float64, "merchant": String},
            ),
            Aggregation("amount", "last_n", timedelta(hours=2), "amounts_2h", n=5),
        ],
        allowed_lateness=timedelta(days=2),
    )


# Ages in seconds, one event per tile. L1: 40 events, the newest 8 without a merchant, so
# its 5 newest tiles hold no (amount, merchant) event and the read must go further back.
# L2: fewer tiles than the read's n. L3: 12 complete events, more tiles than n.
_NEWEST_HISTORY: list[dict[str, object]] = [
    *(
        {"loan_id": "L1", "age": 60 * (7 + 10 * i), "amount": i * 1.5}
        | ({"merchant": f"shop{i}"} if i >= 8 else {})
        for i in range(40)
    ),
    *(
        {"loan_id": "L2", "age": 60 * (30 + 50 * i), "amount": -i, "merchant": "m"}
        for i in range(3)
    ),
    *(
        {"loan_id": "L3", "age": 60 * (3 + 9 * i), "amount": i, "merchant": f"m{i}"}
        for i in range(12)
    ),
]


async def test_last_n_views_read_their_newest_tiles_and_keep_no_rollups(
    features: FeatureStoreStub,
    js: JetStreamContext,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = _newest_first_view(f"newest_{s}", f"src_{s}", loan)
    await _apply(features, loan, view)
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    await _publish_history(js, subject, _NEWEST_HISTORY, random.Random(3), datetime.now(UTC))
    await _wait_for_events(db_pool, f"newest_{s}", len(_NEWEST_HISTORY))
    assert not await tiles.all_rollups(db_pool, f"newest_{s}", 1)

    keys = ["L1", "L2", "L3", "L9"]
    names, online, statuses = await _online(features, [f"newest_{s}:*"], keys)
    applied = (
        await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"newest_{s}"))
    ).feature_view
    offline = await stream_aggregates_as_of(
        db_pool, applied, "loan_id", keys, [datetime.now(UTC)] * len(keys)
    )
    features_of = [n.split(":")[1] for n in names]
    for i, key in enumerate(keys):
        got = dict(zip(features_of, online[i], strict=True))
        if key == "L9":
            assert set(statuses[i]) == {m.FEATURE_STATUS_NOT_FOUND}
            continue
        as_of = offline.slice(i, 1).to_pylist()[0]
        for name, value in got.items():
            assert repr(as_of[name]) == repr(value), (key, name)
        mine = sorted(
            (e for e in _NEWEST_HISTORY if e["loan_id"] == key),
            key=lambda e: -e["age"],  # type: ignore[operator]
        )
        complete = [e for e in mine if "merchant" in e][-3:]
        assert got["recent__amount"] == [e["amount"] + 0.0 for e in complete]  # type: ignore[operator]
        assert got["recent__merchant"] == [e["merchant"] for e in complete]
        within = [e["amount"] + 0.0 for e in mine if e["age"] < 2 * 3600][-5:]  # type: ignore[operator]
        assert got["amounts_2h"] == within, key
        assert len(got["recent__amount"]) == 3  # type: ignore[arg-type]
