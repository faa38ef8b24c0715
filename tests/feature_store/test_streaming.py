"""Streaming aggregations end to end: JetStream -> tiles -> online, backfill, point in time.

Events are published to `<namespace>.ingest.<source>` on the real NATS the suite runs
against and consumed by the feature-store host of the `features` fixture; Postgres is
read directly to wait for tiles and to compare them.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pyarrow as pa
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings, ServiceName
from libs.sdk.features import (
    Aggregation,
    Entity,
    FeatureView,
    Field,
    Float64,
    PushSource,
    StreamSource,
    repository_of,
)
from services.feature_store.app.streaming.backfill import backfill_view, import_events
from services.feature_store.app.streaming.history import stream_aggregates_as_of
from services.feature_store.app.streaming.ingest import CONSUMER, ingest_streams, prune_tiles
from services.feature_store.domain.definitions.read_plan import index_definitions
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.service import SPEC
from services.feature_store.store import stream_events, tiles
from services.feature_store.store.stream_events import RawEvent
from tests.conftest import free_port
from tests.feature_store.helpers import column, python, suffix
from tests.support.hosting import hosted

PRESENT, NOT_FOUND = m.FEATURE_STATUS_PRESENT, m.FEATURE_STATUS_NOT_FOUND
FUNCTIONS = ("count", "sum", "mean", "min", "max", "last")
WINDOWS = {"10m": timedelta(minutes=10), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
WINDOWS["7d"] = timedelta(days=7)


def _view(
    name: str,
    source: str,
    loan: Entity,
    *,
    windows: dict[str, timedelta] = WINDOWS,
    tile: timedelta | None = None,
    lateness: timedelta | None = None,
) -> FeatureView:
    return FeatureView(
        name,
        entity=loan,
        source=StreamSource(source, event_time_field="at"),
        aggregations=[
            Aggregation("amount", function, window, f"amount_{function}_{label}")
            for label, window in windows.items()
            for function in FUNCTIONS
        ],
        tile_size=tile,
        allowed_lateness=lateness,
    )


async def _apply(features: FeatureStoreStub, *objects: object) -> None:
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of(list(objects)))
    )


async def _applied(features: FeatureStoreStub, name: str) -> m.FeatureView:
    """The view as the server completed it (default tile size and lateness filled in)."""
    return (await features.GetFeatureView(rr.GetFeatureViewRequest(name=name))).feature_view


async def _publish(
    js: JetStreamContext, subject: str, body: object, *, msg_id: str | None = None
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id or str(uuid.uuid4())})


def _at(moment: datetime) -> str:
    return moment.isoformat()


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _events_in_tiles(db_pool: asyncpg.Pool, view: str) -> int:
    states = await tiles.all_tiles(db_pool, view, 1)
    return sum(agg.decode_state(s).count for s in states.values())


async def _wait_for_events(db_pool: asyncpg.Pool, view: str, count: int) -> None:
    async def counted() -> bool:
        return await _events_in_tiles(db_pool, view) >= count

    await _eventually(counted, f"{count} events in the tiles of {view}")


async def _online(
    features: FeatureStoreStub, references: list[str], keys: list[str]
) -> list[dict[str, tuple[object, int]]]:
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=references),
            entities={"loan_id": column(keys)},
        )
    )
    return [
        {
            name.split(":")[1]: (python(value), status)
            for name, value, status in zip(
                response.feature_names, vector.values, vector.statuses, strict=True
            )
        }
        for vector in response.results
    ]


async def test_stream_view_round_trips_through_apply(features: FeatureStoreStub) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"pay_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="paid_at", entity_field="account"),
        aggregations=[
            Aggregation("", "count", timedelta(hours=1), "n_1h"),
            Aggregation("amount", "sum", timedelta(days=7), "amount_sum_7d"),
            Aggregation("amount", "last", timedelta(minutes=10), "amount_last_10m"),
        ],
        tile_size=timedelta(minutes=5),
        allowed_lateness=timedelta(hours=2),
    )
    await _apply(features, view)

    got = (await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"pay_{s}"))).feature_view

    assert got.stream_source == m.StreamSource(
        source=f"src_{s}",
        format=m.EVENT_FORMAT_JSON,
        entity_field="account",
        event_time_field="paid_at",
    )
    assert [(a.name, a.function, a.column, a.window.ToTimedelta()) for a in got.aggregations] == [
        ("n_1h", m.AGGREGATION_FUNCTION_COUNT, "", timedelta(hours=1)),
        ("amount_sum_7d", m.AGGREGATION_FUNCTION_SUM, "amount", timedelta(days=7)),
        ("amount_last_10m", m.AGGREGATION_FUNCTION_LAST, "amount", timedelta(minutes=10)),
    ]
    assert got.tile_size.ToTimedelta() == timedelta(minutes=5)
    assert got.allowed_lateness.ToTimedelta() == timedelta(hours=2)
    assert [(f.name, f.type) for f in got.features] == [
        ("n_1h", m.VALUE_TYPE_INT64),
        ("amount_sum_7d", m.VALUE_TYPE_FLOAT64),
        ("amount_last_10m", m.VALUE_TYPE_FLOAT64),
    ]


async def test_windows_are_relative_to_the_read_time(
    features: FeatureStoreStub, js: JetStreamContext, test_settings: LatheSettings, db_pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    # Old events are accepted (a generous lateness) so that some fall out of windows.
    view = _view(f"pay_{s}", f"src_{s}", loan, lateness=timedelta(days=30))
    # One-second tiles and a two-second window: watch a value leave its window.
    quick = _view(
        f"quick_{s}",
        f"src_{s}",
        loan,
        windows={"2s": timedelta(seconds=2), "1h": timedelta(hours=1)},
        tile=timedelta(seconds=1),
    )
    await _apply(features, view, quick)
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    now = datetime.now(UTC)
    ages_amounts = [
        (timedelta(days=10), 320.0),  # outside every window
        (timedelta(minutes=2), 10.0),
        (timedelta(days=3), 160.0),
        (timedelta(minutes=30), 20.0),
        (timedelta(minutes=90), 40.0),  # out of the hour: a 1-hour count excludes it
        (timedelta(hours=5), 80.0),
    ]
    for age, amount in ages_amounts:
        await _publish(js, subject, {"loan_id": "L1", "at": _at(now - age), "amount": amount})
    await _wait_for_events(db_pool, f"pay_{s}", len(ages_amounts))

    [l1, l2] = await _online(features, [f"pay_{s}:*"], ["L1", "L2"])

    expected = {
        "10m": [10.0],
        "1h": [10.0, 20.0],
        "1d": [10.0, 20.0, 40.0, 80.0],
        "7d": [10.0, 20.0, 40.0, 80.0, 160.0],
    }
    for label, amounts in expected.items():
        assert l1[f"amount_count_{label}"] == (len(amounts), PRESENT)
        assert l1[f"amount_sum_{label}"] == (sum(amounts), PRESENT)
        assert l1[f"amount_mean_{label}"] == (sum(amounts) / len(amounts), PRESENT)
        assert l1[f"amount_min_{label}"] == (min(amounts), PRESENT)
        assert l1[f"amount_max_{label}"] == (max(amounts), PRESENT)
        assert l1[f"amount_last_{label}"] == (10.0, PRESENT)  # the latest event time wins
    assert all(status == NOT_FOUND and value is None for value, status in l2.values())

    # The quick view dropped the events older than its 10-minute lateness (5 of 6).
    assert await _events_in_tiles(db_pool, f"quick_{s}") == 1
    await _publish(js, subject, {"loan_id": "L1", "at": _at(datetime.now(UTC)), "amount": 5.0})
    await _wait_for_events(db_pool, f"quick_{s}", 2)
    [fresh] = await _online(features, [f"quick_{s}:*"], ["L1"])
    assert fresh["amount_count_2s"] == (1, PRESENT)
    assert fresh["amount_last_2s"] == (5.0, PRESENT)
    await asyncio.sleep(3.1)  # nothing arrives meanwhile

    [later] = await _online(features, [f"quick_{s}:*"], ["L1"])

    assert later["amount_count_2s"] == (0, PRESENT)
    assert later["amount_sum_2s"] == (0.0, PRESENT)
    assert later["amount_mean_2s"] == (None, PRESENT)  # no value in an empty window
    assert later["amount_last_2s"] == (None, PRESENT)
    assert later["amount_count_1h"] == (2, PRESENT)
    assert later["amount_last_1h"] == (5.0, PRESENT)


async def test_out_of_order_events_within_lateness_count_and_later_ones_do_not(
    features: FeatureStoreStub, js: JetStreamContext, test_settings: LatheSettings, db_pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, _view(f"pay_{s}", f"src_{s}", loan, lateness=timedelta(minutes=10)))
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    now = datetime.now(UTC)
    for age, amount in [
        (timedelta(minutes=1), 1.0),
        (timedelta(minutes=6), 2.0),  # older, arrives later: still within the lateness
        (timedelta(minutes=25), 4.0),  # 25 minutes late: dropped
        (-timedelta(hours=1), 8.0),  # an hour in the future (a skewed clock): dropped
        (timedelta(minutes=3), 16.0),
    ]:
        await _publish(js, subject, {"loan_id": "L1", "at": _at(now - age), "amount": amount})

    async def rejected_two() -> bool:
        counts = await stream_events.rejections(db_pool, f"src_{s}")
        return sum(counts.values()) == 2

    await _eventually(rejected_two, "two rejections")
    await _wait_for_events(db_pool, f"pay_{s}", 3)
    [l1] = await _online(features, [f"pay_{s}:*"], ["L1"])

    assert l1["amount_count_1h"] == (3, PRESENT)
    assert l1["amount_sum_1h"] == (19.0, PRESENT)
    assert l1["amount_min_1h"] == (1.0, PRESENT)
    assert l1["amount_last_1h"] == (1.0, PRESENT)  # greatest event time, not last arrival
    assert l1["amount_count_10m"] == (3, PRESENT)
    assert await stream_events.rejections(db_pool, f"src_{s}") == {
        (f"pay_{s}", 1, "late"): 1,
        (f"pay_{s}", 1, "future"): 1,
    }


async def test_bad_events_are_counted_and_do_not_stop_the_stream(
    features: FeatureStoreStub, js: JetStreamContext, test_settings: LatheSettings, db_pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, _view(f"pay_{s}", f"src_{s}", loan))
    names = ingest_streams(test_settings.namespace)
    subject = names.subject(f"src_{s}")
    now = _at(datetime.now(UTC))
    for bad in [
        b"\xff not json at all",
        b"[1, 2, 3]",
        {"at": now, "amount": 1.0},  # no entity
        {"loan_id": "L1", "amount": 1.0},  # no event time
        {"loan_id": "L1", "at": "yesterday", "amount": 1.0},
        {"loan_id": "L1", "at": "2026-01-01T00:00:00", "amount": 1.0},  # no UTC offset
        {"loan_id": "L1", "at": now, "amount": "12.50"},  # a string, not a number
        {"loan_id": "L1", "at": now, "amount": True},
        {"loan_id": 3.5, "at": now, "amount": 1.0},
    ]:
        await _publish(js, subject, bad)
    await _publish(js, names.subject("Not-A-Source"), {"loan_id": "L1"})
    await _publish(js, subject, {"loan_id": "L1", "at": now, "amount": 7.0})
    await _publish(js, subject, {"loan_id": "L1", "at": now})  # no amount: counted, no value

    await _wait_for_events(db_pool, f"pay_{s}", 2)
    [l1] = await _online(features, [f"pay_{s}:*"], ["L1"])

    assert l1["amount_count_1h"] == (2, PRESENT)
    assert l1["amount_sum_1h"] == (7.0, PRESENT)
    assert l1["amount_mean_1h"] == (7.0, PRESENT)
    view = (f"pay_{s}", 1)
    assert await stream_events.rejections(db_pool, f"src_{s}") == {
        ("", 0, "not_json"): 1,
        ("", 0, "not_object"): 1,
        (*view, "missing_entity"): 1,
        (*view, "missing_event_time"): 1,
        (*view, "bad_event_time"): 2,
        (*view, "not_numeric:amount"): 2,
        (*view, "bad_entity"): 1,
    }
    bad_subject = await stream_events.rejections(db_pool, names.subject("Not-A-Source"))
    assert bad_subject == {("", 0, "bad_subject"): 1}


async def test_redelivery_and_replay_never_double_count(
    features: FeatureStoreStub,
    js: JetStreamContext,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, _view(f"pay_{s}", f"src_{s}", loan))
    names = ingest_streams(test_settings.namespace)
    subject = names.subject(f"src_{s}")
    now = _at(datetime.now(UTC))

    # The handler fails on the "boom" event, after its tile was already merged in the
    # transaction, twice (its batch, then its retry alone): each rollback undoes the
    # merge, the consumer naks it and JetStream redelivers it.
    failed = []
    write_tiles = tiles.write_tiles

    async def fail_twice(conn: asyncpg.Connection, states: dict) -> None:
        await write_tiles(conn, states)
        if len(failed) < 2 and any(ref[2] == "boom" for ref in states):
            failed.append(True)
            raise RuntimeError("injected failure after the tile was written")

    monkeypatch.setattr(tiles, "write_tiles", fail_twice)
    duplicate = str(uuid.uuid4())
    await _publish(js, subject, {"loan_id": "L1", "at": now, "amount": 1.0}, msg_id=duplicate)
    await _publish(js, subject, {"loan_id": "L1", "at": now, "amount": 1.0}, msg_id=duplicate)
    await _publish(js, subject, {"loan_id": "boom", "at": now, "amount": 2.0})
    for amount in (4.0, 8.0):
        await _publish(js, subject, {"loan_id": "L1", "at": now, "amount": amount})

    async def boom_counted() -> bool:
        return len(failed) == 2 and await _events_in_tiles(db_pool, f"pay_{s}") == 4

    await _eventually(boom_counted, "the failed event redelivered and counted")
    await asyncio.sleep(0.5)  # any (wrong) extra delivery would land meanwhile
    [l1, boom] = await _online(features, [f"pay_{s}:*"], ["L1", "boom"])
    assert l1["amount_count_1h"] == (3, PRESENT)
    assert l1["amount_sum_1h"] == (13.0, PRESENT)
    assert boom["amount_count_1h"] == (1, PRESENT)
    before = await tiles.all_tiles(db_pool, f"pay_{s}", 1)

    # A full replay, past the consumer's own dedupe: forget what it processed, delete the
    # durable consumer, and start another replica, which redelivers the whole stream.
    await db_pool.execute(
        "DELETE FROM feature_store.processed_events WHERE consumer = $1", CONSUMER
    )
    await js.delete_consumer(names.stream, CONSUMER)
    stream_end = (await js.stream_info(names.stream)).state.last_seq
    replica = test_settings.model_copy(
        update={f"{ServiceName.FEATURE_STORE.value}_addr": f"127.0.0.1:{free_port()}"}
    )
    async with hosted(SPEC, replica):

        async def replayed() -> bool:
            try:
                info = await js.consumer_info(names.stream, CONSUMER)
            except NotFoundError:  # the replica creates it just after it is SERVING
                return False
            return info.ack_floor.stream_seq >= stream_end and not info.num_ack_pending

        await _eventually(replayed, "the replay of the whole ingest stream")

    assert await tiles.all_tiles(db_pool, f"pay_{s}", 1) == before


async def test_replicas_share_the_stream_without_losing_updates(
    features: FeatureStoreStub,
    js: JetStreamContext,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, _view(f"pay_{s}", f"src_{s}", loan))
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    connections = set()
    lock_tiles = tiles.lock_tiles

    async def spy(conn: asyncpg.Connection, *args: object) -> object:
        connections.add(id(conn))  # each replica's consumer has a connection of its own
        return await lock_tiles(conn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(tiles, "lock_tiles", spy)
    replica = test_settings.model_copy(
        update={f"{ServiceName.FEATURE_STORE.value}_addr": f"127.0.0.1:{free_port()}"}
    )
    now = _at(datetime.now(UTC))
    async with hosted(SPEC, replica):
        await asyncio.sleep(0.5)  # the replica joins the consumer's queue group
        # Two entities, one tile each: every event contends for the same two rows.
        await asyncio.gather(
            *(
                _publish(js, subject, {"loan_id": f"L{i % 2}", "at": now, "amount": i})
                for i in range(400)
            )
        )
        await _wait_for_events(db_pool, f"pay_{s}", 400)

    assert len(connections) == 2
    [l0, l1] = await _online(features, [f"pay_{s}:*"], ["L0", "L1"])
    assert l0["amount_count_1h"] == (200, PRESENT)
    assert l0["amount_sum_1h"] == (float(sum(range(0, 400, 2))), PRESENT)
    assert l1["amount_count_1h"] == (200, PRESENT)
    assert l1["amount_max_1h"] == (399.0, PRESENT)


async def test_streaming_and_backfill_give_identical_values(
    features: FeatureStoreStub, js: JetStreamContext, test_settings: LatheSettings, db_pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    lateness = timedelta(days=30)
    streamed = _view(f"live_{s}", f"src_{s}", loan, lateness=lateness)
    await _apply(features, streamed)
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    rng = random.Random(7)
    now = datetime.now(UTC)
    sent = 0
    for _ in range(300):
        # Many decimals, mixed magnitudes, duplicate event times, any order: float sums
        # would differ with the order; exact ones cannot.
        # Ages keep clear of window edges (10m, 1h, 1d, 7d) so reads a moment apart agree.
        moment = now - timedelta(seconds=rng.choice([30, 300, 1800, 20_000, 300_000, 700_000]))
        moment -= timedelta(seconds=rng.randint(0, 3) * 7)
        amount = rng.choice([0.1, 0.2, 0.3, 1e-9, 123456.789, -5.5, rng.uniform(-1e6, 1e6)])
        body: dict[str, object] = {"loan_id": f"L{rng.randint(1, 5)}", "at": _at(moment)}
        if rng.random() > 0.1:
            body["amount"] = amount
        await _publish(js, subject, body)
        sent += 1
    await _wait_for_events(db_pool, f"live_{s}", sent)
    streamed_tiles = await tiles.all_tiles(db_pool, f"live_{s}", 1)
    streamed_rollups = await tiles.all_rollups(db_pool, f"live_{s}", 1)
    assert 0 < len(streamed_rollups) < len(streamed_tiles)

    # The same definition applied afterwards under another name, filled by backfill alone.
    backfilled = _view(f"back_{s}", f"src_{s}", loan, lateness=lateness)
    await _apply(features, backfilled)
    assert await tiles.all_tiles(db_pool, f"back_{s}", 1) == {}
    result = await features.BackfillStreamView(
        rr.BackfillStreamViewRequest(feature_view=f"back_{s}")
    )
    assert (result.version, result.events_read, result.events_used) == (1, sent, sent)
    assert result.tiles_written == len(streamed_tiles) and not result.rejected
    assert await tiles.all_tiles(db_pool, f"back_{s}", 1) == streamed_tiles
    assert await tiles.all_rollups(db_pool, f"back_{s}", 1) == streamed_rollups
    complete = {(f"live_{s}", 1), (f"back_{s}", 1)}
    assert await tiles.rollups_complete(db_pool, list(complete)) == complete
    recorded = await db_pool.fetchval(
        "SELECT count(*) FROM feature_store.events WHERE stream_id = $1 AND event_type = $2",
        f"backfill-back_{s}",
        "lathe.feature_store.v1.StreamViewBackfilled",
    )
    assert recorded == 1
    # Backfilling the streamed view itself replaces its tiles with identical ones.
    await backfill_view(db_pool, agg.spec_of(await _applied(features, f"live_{s}"), "loan_id"))
    assert await tiles.all_tiles(db_pool, f"live_{s}", 1) == streamed_tiles
    assert await tiles.all_rollups(db_pool, f"live_{s}", 1) == streamed_rollups

    # Online reads combine rollups and edge tiles (ADR 0011); offline reads below combine
    # raw events: both must agree.
    keys = [f"L{i}" for i in range(1, 6)]
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"live_{s}:*", f"back_{s}:*"]),
            entities={"loan_id": column(keys)},
        )
    )
    half = len(response.feature_names) // 2
    for vector in response.results:
        assert list(vector.values)[:half] == list(vector.values)[half:]
        assert list(vector.statuses)[:half] == [PRESENT] * half

    # Offline, as of now: the same values the online read returned, for all six functions.
    table = await stream_aggregates_as_of(
        db_pool,
        await _applied(features, f"live_{s}"),
        "loan_id",
        keys,
        [datetime.now(UTC)] * len(keys),
    )
    for vector, offline in zip(response.results, table.to_pylist(), strict=True):
        online_values = [python(v) for v in list(vector.values)[:half]]
        assert online_values == [offline[name] for name in _names(streamed)]


async def test_versions_with_tiles_from_before_rollups_read_tiles_until_backfilled(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    await _apply(features, _view(f"old_{s}", f"src_{s}", loan))
    view = (f"old_{s}", 1)
    assert await tiles.rollups_complete(db_pool, [view]) == {view}  # new: complete
    # As if its tiles had been written before rollups existed:
    await db_pool.execute(
        "DELETE FROM feature_store.stream_rollups_complete WHERE view = $1", view[0]
    )
    async with db_pool.acquire() as conn, conn.transaction():
        await tiles.lock_tiles(conn, [(*view, "L1", 0)])
        await tiles.set_rollups_complete(conn, *view, True, unless_tiles=True)
    assert await tiles.rollups_complete(db_pool, [view]) == set()  # tiles: not complete

    await backfill_view(db_pool, agg.spec_of(await _applied(features, view[0]), "loan_id"))
    assert await tiles.rollups_complete(db_pool, [view]) == {view}


def _names(view: FeatureView) -> list[str]:
    """The view's feature names, in order."""
    return [a.name for a in view.aggregations]


async def test_point_in_time_aggregates_use_known_at_times(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = _view(
        f"hist_{s}",
        f"src_{s}",
        loan,
        windows={"1h": timedelta(hours=1), "1d": timedelta(days=1)},
        lateness=timedelta(hours=2),
    )
    await _apply(features, view)
    applied = await _applied(features, f"hist_{s}")
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)

    def event(key: str, at: datetime, known: datetime, amount: float, sequence: int) -> RawEvent:
        body = {"loan_id": key, "at": at.timestamp(), "amount": amount}  # epoch seconds
        return RawEvent(uuid.uuid4(), sequence, known, json.dumps(body).encode())

    minute = timedelta(minutes=1)
    await import_events(
        db_pool,
        f"src_{s}",
        [
            event("L1", t0, t0, 1.0, 1),
            event("L1", t0 + 10 * minute, t0 + 100 * minute, 2.0, 2),  # known 90 min late
            event("L1", t0 + 20 * minute, t0 + 20 * minute, 4.0, 3),
            event("L1", t0 + 30 * minute, t0 + 200 * minute, 8.0, 4),  # too late: dropped
            event("L2", t0 - 3 * timedelta(days=1), t0 - 3 * timedelta(days=1), 16.0, 5),
        ],
    )
    spec = agg.spec_of(applied, "loan_id")
    result = await backfill_view(db_pool, spec)
    assert result.rejected == {"late": 1}
    labels = [
        ("L1", t0 - minute),  # before anything: null
        ("L1", t0 + 15 * minute),  # the 10-minute event is not known yet
        ("L1", t0 + 25 * minute),
        ("L1", t0 + 105 * minute),  # known now; the hour reaches back to 12:46
        ("L1", t0 + 200 * minute),
        ("L2", t0),  # older than every window
        ("L9", t0),  # unknown entity
    ]

    table = await stream_aggregates_as_of(
        db_pool,
        applied,
        "loan_id",
        pa.array([k for k, _ in labels]),
        pa.array([t for _, t in labels], type=pa.timestamp("us", tz="UTC")),
    )

    rows = table.to_pylist()
    assert [r["amount_count_1h"] for r in rows] == [None, 1, 2, 0, 0, None, None]
    assert [r["amount_count_1d"] for r in rows] == [None, 1, 2, 3, 3, None, None]
    assert [r["amount_sum_1d"] for r in rows] == [None, 1.0, 5.0, 7.0, 7.0, None, None]
    assert [r["amount_sum_1h"] for r in rows] == [None, 1.0, 5.0, 0.0, 0.0, None, None]
    assert [r["amount_last_1d"] for r in rows] == [None, 1.0, 4.0, 4.0, 4.0, None, None]
    assert [r["amount_mean_1h"] for r in rows] == [None, 1.0, 2.5, None, None, None, None]
    assert rows[3]["event_time"] == t0 + 20 * minute
    # Each row equals an online read at its time over the events known then.
    stored = await tiles.all_tiles(db_pool, f"hist_{s}", 1)
    l1_tiles = [(start, agg.decode_state(v)) for (k, start), v in stored.items() if k == "L1"]
    final = agg.combine(spec, l1_tiles, agg.to_us(t0 + 200 * minute))
    assert list(final.values) == [rows[4][a.name] for a in spec.aggregations]


async def test_stream_aggregates_in_a_training_set_match_online(
    features: FeatureStoreStub, js: JetStreamContext, test_settings: LatheSettings, db_pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = _view(f"pay_{s}", f"src_{s}", loan, lateness=timedelta(days=30))
    await _apply(features, view)
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    now = datetime.now(UTC)
    for i, age in enumerate((timedelta(minutes=3), timedelta(hours=2), timedelta(days=2))):
        await _publish(
            js, subject, {"loan_id": "L1", "at": _at(now - age), "amount": 10.0 * (i + 1)}
        )
    await _wait_for_events(db_pool, f"pay_{s}", 3)

    read_at = datetime.now(UTC)
    labels = pa.table(
        {
            "loan_id": ["L1", "L2"],
            "event_time": pa.array([read_at, read_at], pa.timestamp("us", tz="UTC")),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, labels.schema) as writer:
        writer.write_table(labels)
    parts = []
    async for part in features.GetHistoricalFeatures(
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"pay_{s}:*"]),
            entity_rows_arrow=sink.getvalue().to_pybytes(),
        )
    ):
        if not part.HasField("snapshot"):
            parts.append(part.arrow_ipc)
    offline = pa.ipc.open_stream(b"".join(parts)).read_all()
    [online_l1, _] = await _online(features, [f"pay_{s}:*"], ["L1", "L2"])

    for name, (value, _) in online_l1.items():
        assert offline.column(f"pay_{s}:{name}").to_pylist()[0] == value, name
    assert offline.column(f"pay_{s}:amount_count_1d").to_pylist() == [2, None]


async def test_bad_backfill_requests(features: FeatureStoreStub) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    pushed = FeatureView(
        f"pushed_{s}", entity=loan, source=PushSource(), features=[Field("x", Float64)]
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, pushed]))
    )
    cases = [
        (rr.BackfillStreamViewRequest(feature_view=f"nothing_{s}"), "NOT_FOUND"),
        (rr.BackfillStreamViewRequest(feature_view=f"pushed_{s}"), "FAILED_PRECONDITION"),
        (rr.BackfillStreamViewRequest(feature_view="x'; DROP TABLE t; --"), "INVALID_ARGUMENT"),
        (rr.BackfillStreamViewRequest(feature_view=f"pushed_{s}", version=-1), "INVALID_ARGUMENT"),
        (rr.BackfillStreamViewRequest(feature_view=f"pushed_{s}", version=9), "NOT_FOUND"),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await features.BackfillStreamView(request)
        assert raised.value.code().name == code, raised.value.details()


async def test_tiles_past_every_window_are_pruned(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    windows = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}
    await _apply(features, _view(f"aged_{s}", f"src_{s}", loan, windows=windows))
    applied = await _applied(features, f"aged_{s}")
    now = datetime.now(UTC)

    def event(age: timedelta, sequence: int) -> RawEvent:
        at = now - age
        body = {"loan_id": "L1", "at": at.isoformat(), "amount": 10.0}
        return RawEvent(uuid.uuid4(), sequence, at, json.dumps(body).encode())

    ages = [timedelta(days=10), timedelta(days=2), timedelta(minutes=30)]
    await import_events(db_pool, f"src_{s}", [event(age, i) for i, age in enumerate(ages)])
    await backfill_view(db_pool, agg.spec_of(applied, "loan_id"))
    assert len(await tiles.all_tiles(db_pool, f"aged_{s}", 1)) == 3
    [before] = await _online(features, [f"aged_{s}:*"], ["L1"])

    definitions = index_definitions(
        {
            "entity": list(repository_of([loan]).entities),
            "feature_view": [applied],
            "on_demand_view": [],
            "feature_service": [],
        }
    )
    deleted = await prune_tiles(db_pool, definitions, agg.to_us(now))

    # The tiles and rollups of the events 10 and 2 days old: past the 1-day window and the
    # lateness.
    assert deleted == 4
    spec = agg.spec_of(applied, "")
    recent = agg.to_us(now - timedelta(minutes=30))
    remaining = await tiles.all_tiles(db_pool, f"aged_{s}", 1)
    assert [start for _, start in remaining] == [agg.floor_tile(recent, spec.tile_us)]
    rollups = await tiles.all_rollups(db_pool, f"aged_{s}", 1)
    assert [start for _, start in rollups] == [agg.floor_tile(recent, spec.rollup_us)]
    [after] = await _online(features, [f"aged_{s}:*"], ["L1"])
    assert after == before  # online reads never looked that far back
    assert after["amount_count_1h"] == (1, PRESENT)


async def test_raw_events_past_their_retention_are_pruned(
    feature_store_host: object, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    now = datetime.now(UTC)

    def event(age: timedelta, sequence: int) -> RawEvent:
        return RawEvent(uuid.uuid4(), sequence, now - age, b'{"loan_id": "L1"}')

    kept_ages = [timedelta(days=1), timedelta(days=29)]
    await import_events(db_pool, f"a_{s}", [event(timedelta(days=40), 1), event(kept_ages[0], 2)])
    await import_events(db_pool, f"b_{s}", [event(timedelta(days=31), 1), event(kept_ages[1], 2)])

    await stream_events.prune_events(db_pool, now - timedelta(days=30), slice_rows=1)

    left = await db_pool.fetch(
        "SELECT source, arrival_time FROM feature_store.stream_events WHERE source = ANY($1)",
        [f"a_{s}", f"b_{s}"],
    )
    assert sorted((r["source"], now - r["arrival_time"]) for r in left) == [
        (f"a_{s}", kept_ages[0]),
        (f"b_{s}", kept_ages[1]),
    ]


@pytest.mark.parametrize(
    "table,start", [("stream_tiles", "tile_start"), ("stream_rollups", "rollup_start")]
)
async def test_the_state_update_finds_its_row_by_the_whole_key_even_in_a_generic_plan(
    feature_store_host: object, db_pool: asyncpg.Pool, table: str, start: str
) -> None:
    """asyncpg's prepared UPDATE switches to a generic plan; one that reached the row by
    (view, version, start) and filtered entity_key scanned every entity of that hour."""
    sql = tiles._WRITE.format(table=table, start=start)
    async with db_pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE write_state(text, int, text, timestamptz, jsonb) AS {sql}")
        try:
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    "EXPLAIN EXECUTE write_state('v', 1, 'L1', now(), '{}'::jsonb)"
                )
            )
        finally:
            await conn.execute("DEALLOCATE write_state")
    assert "entity_key = $3" in plan.split("Index Cond:")[1].split("\n")[0], plan
