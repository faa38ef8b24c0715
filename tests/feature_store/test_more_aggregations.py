"""STDDEV/VARIANCE, COUNT_DISTINCT, PERCENTILE, offsets and lifetimes end to end (ADR 0022).

Events go through the real JetStream ingest stream into Postgres tiles, rollups and
lifetime rows; the same definition filled by backfill alone must hold identical states,
and online reads, the offline as-of path and training sets must agree value for value
(late, out-of-order and future-dated events included).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import asyncpg
import pyarrow as pa
from nats.js import JetStreamContext

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings
from libs.sdk.features import Aggregation, Entity, FeatureView, StreamSource, repository_of
from services.feature_store.app.streaming.backfill import backfill_view, import_events
from services.feature_store.app.streaming.history import stream_aggregates_as_of
from services.feature_store.app.streaming.ingest import fold_lifetimes, ingest_streams
from services.feature_store.domain.definitions.read_plan import index_definitions
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.domain.streaming import sketches
from services.feature_store.domain.streaming.backfill import BackfillResult, accepted_events
from services.feature_store.store import tiles
from services.feature_store.store.stream_events import RawEvent
from tests.feature_store.helpers import column, python, suffix
from tests.feature_store.test_streaming import _publish, _wait_for_events

PRESENT = m.FEATURE_STATUS_PRESENT
DAY = timedelta(days=1)


def _view(name: str, source: str, loan: Entity, lateness: timedelta) -> FeatureView:
    return FeatureView(
        name,
        entity=loan,
        source=StreamSource(source, event_time_field="at"),
        aggregations=[
            Aggregation("amount", "stddev", timedelta(hours=1), "amount_sd_1h"),
            Aggregation("amount", "variance", DAY, "amount_var_1d"),
            Aggregation("amount", "stddev_pop", 7 * DAY, "amount_sdp_7d"),
            Aggregation("amount", "variance_pop", DAY, "amount_varp_1d_1d_ago", offset=DAY),
            Aggregation("merchant", "count_distinct", DAY, "merchants_1d"),
            Aggregation("merchant", "count_distinct", 7 * DAY, "merchants_7d"),
            Aggregation("amount", "percentile", 7 * DAY, "amount_p50_7d", percentile=50),
            Aggregation("amount", "percentile", DAY, "amount_p99_1d", percentile=99),
            Aggregation(
                "amount",
                "percentile",
                5 * DAY,
                "amount_p90_5d_2d_ago",
                percentile=90,
                offset=2 * DAY,
            ),
            Aggregation("", "count", None, "events_ever", lifetime=True),
            Aggregation("amount", "sum", None, "amount_ever", lifetime=True),
            Aggregation("merchant", "count_distinct", None, "merchants_ever", lifetime=True),
            Aggregation(
                "amount", "percentile", None, "amount_p90_ever", percentile=90, lifetime=True
            ),
            Aggregation("amount", "stddev", None, "amount_sd_ever", lifetime=True),
        ],
        allowed_lateness=lateness,
    )


async def _apply(features: FeatureStoreStub, *objects: object) -> None:
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of(list(objects)))
    )


async def _applied(features: FeatureStoreStub, name: str) -> m.FeatureView:
    return (await features.GetFeatureView(rr.GetFeatureViewRequest(name=name))).feature_view


async def _online(features: FeatureStoreStub, references: list[str], keys: list[str]):
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=references),
            entities={"loan_id": column(keys)},
        )
    )
    return response


# Ages kept clear of every window edge (1 h, 1 d, 2 d, 7 d), so reads a few seconds apart
# see the same events, and the brute force below knows which events each window holds.
_AGES = [
    60,
    600,
    2000,
    5 * 3600,
    30 * 3600,
    50 * 3600,
    60 * 3600,
    4 * 86400,
    6.5 * 86400,
    9 * 86400,
]


def _distinct(value: object) -> tuple[str, object]:
    """Values COUNT_DISTINCT tells apart: equal numbers are one value (1 and 1.0),
    booleans and strings are not numbers."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int | float):
        return "number", Fraction(value)
    return "text", value


def _brute(bodies: list[dict], ages: list[float], key: str) -> dict[str, object]:
    """What each feature must be over the events of ``key`` (each with its age in s)."""

    def amounts(low: float, high: float) -> list[float]:
        return [
            b["amount"]
            for b, age in zip(bodies, ages, strict=True)
            if b["loan_id"] == key and low <= age < high and "amount" in b
        ]

    def merchants(low: float, high: float) -> int:
        return len(
            {
                _distinct(b["merchant"])
                for b, age in zip(bodies, ages, strict=True)
                if b["loan_id"] == key and low <= age < high and "merchant" in b
            }
        )

    def percentile(values: list[float], p: float) -> object:
        """Exact up to 64 values; past that, a check within the stated 1%."""
        if not values:
            return None
        ordered = sorted(Fraction(v) for v in values)
        rank = Fraction(p) / 100 * (len(ordered) - 1)
        whole = math.floor(rank)
        low = ordered[whole]
        high = ordered[min(whole + 1, len(ordered) - 1)]
        exact = low + (rank - whole) * (high - low)
        if len(values) <= sketches.EXACT_VALUES:
            return float(exact)
        bound = sketches.RELATIVE_ACCURACY * max(abs(low), abs(high))
        return lambda got: abs(Fraction(got) - exact) <= bound * (1 + 1e-9)

    def variance(values: list[float], sample: bool) -> float | None:
        exact = [Fraction(v) for v in values]
        if len(exact) < (2 if sample else 1):
            return None
        mean = sum(exact, Fraction(0)) / len(exact)
        return float(sum((v - mean) ** 2 for v in exact) / (len(exact) - (1 if sample else 0)))

    def root(value: float | None) -> float | None:
        return None if value is None else math.sqrt(value)

    hour, day, inf = 3600, 86400, math.inf
    ever = amounts(0, inf)
    return {
        "amount_sd_1h": root(variance(amounts(0, hour), True)),
        "amount_var_1d": variance(amounts(0, day), True),
        "amount_sdp_7d": root(variance(amounts(0, 7 * day), False)),
        "amount_varp_1d_1d_ago": variance(amounts(day, 2 * day), False),
        "merchants_1d": merchants(0, day),
        "merchants_7d": merchants(0, 7 * day),
        "amount_p50_7d": percentile(amounts(0, 7 * day), 50),
        "amount_p99_1d": percentile(amounts(0, day), 99),
        "amount_p90_5d_2d_ago": percentile(amounts(2 * day, 7 * day), 90),
        "events_ever": sum(1 for b in bodies if b["loan_id"] == key),
        "amount_ever": float(sum((Fraction(v) for v in ever), Fraction(0))),
        "merchants_ever": merchants(0, inf),
        "amount_p90_ever": percentile(ever, 90),
        "amount_sd_ever": root(variance(ever, True)),
    }


async def test_new_aggregations_streamed_equal_backfilled_online_offline_and_brute_force(
    features: FeatureStoreStub,
    js: JetStreamContext,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    lateness = timedelta(days=30)
    await _apply(features, _view(f"live_{s}", f"src_{s}", loan, lateness))
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    rng = random.Random(22)
    now = datetime.now(UTC)
    bodies, ages = [], []
    for _ in range(260):  # any order: ages are drawn, not sorted
        age = rng.choice(_AGES) + rng.randint(0, 3) * 7
        body: dict[str, object] = {
            "loan_id": f"L{rng.randint(1, 3)}",
            "at": (now - timedelta(seconds=age)).isoformat(),
        }
        if rng.random() > 0.1:
            body["amount"] = rng.choice(
                [
                    0.1,
                    0.2,
                    0.3,
                    1e-9,
                    123456.789,
                    -5.5,
                    1e9 + rng.randint(0, 9),
                    rng.uniform(-1e6, 1e6),
                ]
            )
        if rng.random() > 0.1:
            body["merchant"] = rng.choice(
                [f"m{rng.randrange(300)}", rng.randrange(40), True, "1", 1.0]
            )
        bodies.append(body)
        ages.append(age)
        await _publish(js, subject, body)
    # Dated 5 minutes ahead (a producer clock; within the lateness): counted from its time.
    await _publish(
        js,
        subject,
        {"loan_id": "L1", "at": (now + timedelta(minutes=5)).isoformat(), "amount": 1.0},
    )
    await _wait_for_events(db_pool, f"live_{s}", len(bodies) + 1)
    pending = await tiles.all_pending(db_pool, f"live_{s}", 1)
    assert [key for key, _ in pending] == ["L1"]  # the future-dated event waits for its tile

    # The same definition applied afterwards under another name, filled by backfill alone.
    await _apply(features, _view(f"back_{s}", f"src_{s}", loan, lateness))
    result = await features.BackfillStreamView(
        rr.BackfillStreamViewRequest(feature_view=f"back_{s}")
    )
    assert result.events_used == len(bodies) + 1 and not result.rejected
    for read in (tiles.all_tiles, tiles.all_rollups, tiles.all_pending, tiles.all_lifetimes):
        streamed = await read(db_pool, f"live_{s}", 1)
        assert streamed and await read(db_pool, f"back_{s}", 1) == streamed, read.__name__

    keys = ["L1", "L2", "L3", "L9"]
    response = await _online(features, [f"live_{s}:*", f"back_{s}:*"], keys)
    half = len(response.feature_names) // 2
    names = [n.split(":")[1] for n in response.feature_names[:half]]
    table = await stream_aggregates_as_of(
        db_pool, await _applied(features, f"live_{s}"), "loan_id", keys, [datetime.now(UTC)] * 4
    )
    for key, vector, offline in zip(keys, response.results, table.to_pylist(), strict=True):
        online = [python(v) for v in vector.values]
        assert online[:half] == online[half:]  # streamed == backfilled
        assert [repr(v) for v in online[:half]] == [repr(offline[n]) for n in names]
        if key == "L9":
            assert set(vector.statuses) == {m.FEATURE_STATUS_NOT_FOUND}
            continue
        assert list(vector.statuses) == [PRESENT] * len(vector.statuses)
        expected = _brute(bodies, ages, key)
        for name, value in zip(names, online[:half], strict=True):
            wanted = expected[name]
            assert wanted(value) if callable(wanted) else value == wanted, (key, name, value)


async def test_an_event_dated_ahead_counts_in_lifetimes_once_its_tile_starts(
    features: FeatureStoreStub,
    js: JetStreamContext,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
) -> None:
    """It waits in a pending row; reads include it from its tile on, whether or not the
    pass has folded it into the lifetime state yet."""
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"life_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="at"),
        aggregations=[
            Aggregation("", "count", None, "events_ever", lifetime=True),
            Aggregation(
                "amount", "percentile", None, "amount_p50_ever", percentile=50, lifetime=True
            ),
        ],
        tile_size=timedelta(seconds=1),
        allowed_lateness=2 * DAY,
    )
    await _apply(features, view)
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    now = datetime.now(UTC)
    await _publish(js, subject, {"loan_id": "L1", "at": (now - DAY).isoformat(), "amount": 2.0})
    ahead = now + timedelta(seconds=3)
    await _publish(js, subject, {"loan_id": "L1", "at": ahead.isoformat(), "amount": 4.0})
    await _wait_for_events(db_pool, f"life_{s}", 2)
    assert len(await tiles.all_pending(db_pool, f"life_{s}", 1)) == 1

    async def ever() -> list[object]:
        response = await _online(features, [f"life_{s}:*"], ["L1"])
        return [python(v) for v in response.results[0].values]

    assert await ever() == [1, 2.0]  # not yet: its tile has not started
    await asyncio.sleep((ahead - datetime.now(UTC)).total_seconds() + 1)
    assert await ever() == [2, 3.0]  # read from the pending row
    definitions = index_definitions(
        {
            "entity": list(repository_of([loan]).entities),
            "feature_view": [await _applied(features, f"life_{s}")],
            "on_demand_view": [],
            "feature_service": [],
        }
    )
    assert await fold_lifetimes(db_pool, definitions, datetime.now(UTC)) == 1
    assert await tiles.all_pending(db_pool, f"life_{s}", 1) == {}
    assert await ever() == [2, 3.0]  # from the lifetime state alone
    table = await stream_aggregates_as_of(
        db_pool,
        await _applied(features, f"life_{s}"),
        "loan_id",
        ["L1", "L1"],
        [ahead - timedelta(seconds=1), datetime.now(UTC)],
    )
    assert table.column("events_ever").to_pylist() == [1, 2]
    assert table.column("amount_p50_ever").to_pylist() == [2.0, 3.0]


async def test_training_sets_with_new_aggregations_match_online_reads_of_the_past(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """Imported history (known-at times, some late) read as of several label times:
    GetHistoricalFeatures equals online reads over the events known then."""
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, _view(f"hist_{s}", f"src_{s}", loan, timedelta(hours=6)))
    applied = await _applied(features, f"hist_{s}")
    spec = agg.spec_of(applied, "loan_id")
    rng = random.Random(5)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    raw = []
    for sequence in range(400):
        at = t0 + timedelta(seconds=rng.randrange(10 * 86400))
        known = at + timedelta(seconds=rng.choice([0, 0, 30, 3600, 5 * 3600, 8 * 3600]))
        body = {
            "loan_id": rng.choice(["L1", "L2"]),
            "at": at.timestamp(),
            "amount": round(rng.lognormvariate(4, 1), 2),
            "merchant": f"m{rng.randrange(200)}",
        }
        raw.append(RawEvent(uuid.uuid4(), sequence, known, json.dumps(body).encode()))
    await import_events(db_pool, f"src_{s}", raw)
    backfilled = await backfill_view(db_pool, spec)
    assert backfilled.rejected["late"] > 0  # known 8 hours late: past the lateness

    labels = [
        (rng.choice(["L1", "L2"]), t0 + timedelta(seconds=rng.randrange(11 * 86400)))
        for _ in range(12)
    ]
    sink = pa.BufferOutputStream()
    table = pa.table(
        {
            "loan_id": [k for k, _ in labels],
            "event_time": pa.array([t for _, t in labels], pa.timestamp("us", tz="UTC")),
        }
    )
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    parts = []
    async for part in features.GetHistoricalFeatures(
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"hist_{s}:*"]),
            entity_rows_arrow=sink.getvalue().to_pybytes(),
        )
    ):
        if not part.HasField("snapshot"):
            parts.append(part.arrow_ipc)
    training = pa.ipc.open_stream(b"".join(parts)).read_all().to_pylist()

    parsed = list(accepted_events(spec, raw, BackfillResult()))
    for (key, at), row in zip(labels, training, strict=True):
        at_us = agg.to_us(at)
        known = [e for e in parsed if e.entity_key == key and e.arrival_us <= at_us]
        built = agg.build_tiles(spec, known)
        online = agg.combine(spec, [(st, state) for (k, st), state in built.items()], at_us)
        expected = [None] * len(spec.aggregations) if online.latest_us is None else online.values
        got = [row[f"hist_{s}:{a.name}"] for a in spec.aggregations]
        assert [repr(v) for v in got] == [repr(v) for v in expected], (key, at)
    assert sum(1 for row in training if row[f"hist_{s}:events_ever"]) >= 6
