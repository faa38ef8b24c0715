"""The in-memory online replica follows Postgres exactly, and reads without it agree."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
import pytest_asyncio

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from libs.sdk.features import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    PushSource,
    StreamSource,
    repository_of,
)
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.online import reply as online_reply
from services.feature_store.app.online.promotion import PendingPromoter
from services.feature_store.app.online.reader import OnlineReader
from services.feature_store.app.online.replica import OnlineReplica
from services.feature_store.service import SPEC
from services.feature_store.store import online
from services.feature_store.store.definitions import DefinitionQueries
from tests.conftest import free_port
from tests.feature_store.helpers import column, python, suffix
from tests.support.hosting import hosted

NOW = datetime.now(UTC).replace(microsecond=0)


def _row(value: float) -> bytes:
    return m.FeatureRow(values=[m.Value(float64_value=value)]).SerializeToString()


async def _upsert(conn: asyncpg.Connection, view: str, key: str, value: float) -> None:
    await online.upsert_latest(conn, view, 1, [(key, _row(value), NOW, NOW, 1)])


async def test_change_feed_returns_a_transaction_that_commits_late(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool
) -> None:
    """An older transaction committing after a newer one is not skipped (ADR 0009)."""
    s = suffix()
    seen: list[tuple[str, str, float]] = []

    def collect(records: Sequence[asyncpg.Record]) -> None:
        seen.extend(
            (r["view"], r["entity_key"], m.FeatureRow.FromString(r["row"]).values[0].float64_value)
            for r in records
            if r["view"].endswith(s)
        )

    async with db_pool.acquire() as slow, db_pool.acquire() as fast, db_pool.acquire() as reader:
        late = slow.transaction()
        await late.start()
        await _upsert(slow, f"late_{s}", "L1", 1.0)  # takes the older transaction id
        await _upsert(fast, f"early_{s}", "L1", 2.0)  # commits first

        horizon = await online.read_changes(reader, 0, collect)
        assert seen == [(f"early_{s}", "L1", 2.0)]

        await late.commit()
        seen.clear()
        await online.read_changes(reader, horizon, collect)
        assert (f"late_{s}", "L1", 1.0) in seen


@pytest_asyncio.fixture(loop_scope="session")
async def replica(feature_store_host: ServiceHost, db_pool: asyncpg.Pool) -> AsyncIterator:
    stop = asyncio.Event()
    held = OnlineReplica(db_pool, max_rows=1_000_000, poll_interval_s=30)
    task = asyncio.create_task(held.run(stop))
    for _ in range(500):
        if held.tables is not None:
            break
        await asyncio.sleep(0.01)
    yield held
    stop.set()
    await task


async def test_replica_applies_other_connections_writes(
    replica: OnlineReplica, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    await _upsert_committed(db_pool, f"v_{s}", "L1", 3.5)
    await replica.catch_up()
    tables = replica.tables
    assert tables is not None
    assert m.FeatureRow.FromString(tables[(f"v_{s}", 1)]["L1"].row).values[0].float64_value == 3.5

    await _upsert_committed(db_pool, f"v_{s}", "L1", 4.5)
    for _ in range(100):  # woken by NOTIFY, not by its 30 s poll
        if replica.tables[(f"v_{s}", 1)]["L1"].row == _row(4.5):  # type: ignore[index]
            break
        await asyncio.sleep(0.02)
    assert replica.tables[(f"v_{s}", 1)]["L1"].row == _row(4.5)  # type: ignore[index]


async def _upsert_committed(pool: asyncpg.Pool, view: str, key: str, value: float) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await _upsert(conn, view, key, value)


async def test_replica_turns_off_past_its_row_limit(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool
) -> None:
    await _upsert_committed(db_pool, f"v_{suffix()}", "L1", 1.0)
    await _upsert_committed(db_pool, f"v_{suffix()}", "L1", 1.0)
    small = OnlineReplica(db_pool, max_rows=1)
    await asyncio.wait_for(small.run(asyncio.Event()), timeout=10)  # returns once it is off
    assert small.tables is None and small.rows == 0
    await small.catch_up()  # writers do not wait on a replica that is off


@pytest_asyncio.fixture(loop_scope="session")
async def without_replica(
    feature_store_host: ServiceHost, test_settings: LatheSettings
) -> AsyncIterator[FeatureStoreStub]:
    """A second replica of the service that reads Postgres on every call."""
    settings = test_settings.model_copy(
        update={
            "feature_store_replica_max_rows": 0,
            f"{ServiceName.FEATURE_STORE.value}_addr": f"127.0.0.1:{free_port()}",
        }
    )
    async with (
        hosted(SPEC, settings),
        grpc.aio.insecure_channel(settings.service_addr(ServiceName.FEATURE_STORE)) as channel,
    ):
        yield FeatureStoreStub(channel)


@pytest.mark.parametrize("selection", ["whole_view", "some_features"])
async def test_reads_from_memory_and_from_postgres_agree(
    features: FeatureStoreStub, without_replica: FeatureStoreStub, selection: str
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"scores_{s}",
        entity=loan,
        source=PushSource(),
        ttl=timedelta(days=1),
        features=[Field("a", Float64), Field("b", Float64)],
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
    )
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"scores_{s}",
            columns={
                "loan_id": column(["L1", "L2"]),
                "event_time": column([NOW - timedelta(hours=1), NOW - timedelta(days=2)]),
                "a": column([1.5, 2.5]),
                "b": column([None, 3.5]),
            },
        )
    )
    references = [f"scores_{s}:*"] if selection == "whole_view" else [f"scores_{s}:b"]
    request = rr.GetOnlineFeaturesRequest(
        feature_list=rr.FeatureList(features=references),
        entities={"loan_id": column(["L1", "L2", "L3", "L1"])},
    )

    from_memory = await features.GetOnlineFeatures(request)
    from_postgres = await without_replica.GetOnlineFeatures(request)

    assert from_memory == from_postgres
    first = from_memory.results[0]
    expected = [1.5, None] if selection == "whole_view" else [None]
    assert [python(v) for v in first.values] == expected
    assert [r.statuses[0] for r in from_memory.results] == [
        m.FEATURE_STATUS_PRESENT,
        m.FEATURE_STATUS_EXPIRED,
        m.FEATURE_STATUS_NOT_FOUND,
        m.FEATURE_STATUS_PRESENT,
    ]


async def test_rows_stored_before_a_feature_was_appended(
    features: FeatureStoreStub, without_replica: FeatureStoreStub
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")

    def view(*names: str) -> FeatureView:
        return FeatureView(
            f"grown_{s}",
            entity=loan,
            source=PushSource(),
            features=[Field(name, Float64) for name in names],
        )

    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view("a")]))
    )
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"grown_{s}",
            columns={
                "loan_id": column(["L1"]),
                "event_time": column([NOW - timedelta(hours=1)]),
                "a": column([1.5]),
            },
        )
    )
    await features.ApplyDefinitions(  # a compatible change: same version, one more feature
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view("a", "b")]))
    )
    request = rr.GetOnlineFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"grown_{s}:*"]),
        entities={"loan_id": column(["L1"])},
    )

    from_memory = await features.GetOnlineFeatures(request)
    from_postgres = await without_replica.GetOnlineFeatures(request)

    assert from_memory == from_postgres
    [row] = from_memory.results
    assert [python(v) for v in row.values] == [1.5, None]
    assert list(row.statuses) == [m.FEATURE_STATUS_PRESENT, m.FEATURE_STATUS_NOT_FOUND]
    assert [t.ToDatetime(tzinfo=UTC) for t in row.event_times] == [NOW - timedelta(hours=1)] * 2


async def test_feature_services_read_ready_entries_that_follow_every_write(
    features: FeatureStoreStub,
    without_replica: FeatureStoreStub,
    replica: OnlineReplica,
    db_pool: asyncpg.Pool,
) -> None:
    """The per-entity entries a feature service reads (ADR 0010) agree with Postgres,
    before and after a row changes."""
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    scores = FeatureView(
        f"scores_{s}",
        entity=loan,
        source=PushSource(),
        ttl=timedelta(days=1),
        features=[Field("a", Float64), Field("b", Float64)],
    )
    profile = FeatureView(
        f"profile_{s}", entity=loan, source=PushSource(), features=[Field("c", Float64)]
    )
    service = FeatureService(f"uw_{s}", [f"scores_{s}:*", f"profile_{s}:*"])
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, scores, profile, service]))
    )

    async def push(view: str, keys: list[str], ages: list[timedelta], **values: list) -> None:
        await features.PushFeatures(
            rr.PushFeaturesRequest(
                feature_view=view,
                columns={
                    "loan_id": column(keys),
                    "event_time": column([NOW - age for age in ages]),
                    **{name: column(v) for name, v in values.items()},
                },
            )
        )

    await push(
        f"scores_{s}",
        ["L1", "L2"],
        [timedelta(hours=1), timedelta(days=2)],
        a=[1.5, 2.5],
        b=[None, 3.5],
    )
    await push(f"profile_{s}", ["L1", "L3"], [timedelta(days=9)] * 2, c=[10.0, 30.0])
    await replica.catch_up()
    cache = DefinitionsCache(DefinitionQueries(db_pool))
    reader = OnlineReader(db_pool, cache, replica)
    keys = ["L1", "L2", "L3", "L4", "L1"]

    async def both() -> tuple[rr.GetOnlineFeaturesResponse, rr.GetOnlineFeaturesResponse]:
        ready = await reader.read(
            feature_service=f"uw_{s}",
            references=(),
            entities={"loan_id": column(keys)},
            request_data={},
        )
        from_postgres = await without_replica.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_service=f"uw_{s}", entities={"loan_id": column(keys)}
            )
        )
        return rr.GetOnlineFeaturesResponse.FromString(ready), from_postgres

    ready, from_postgres = await both()
    assert ready == from_postgres
    assert [python(v) for v in ready.results[0].values] == [1.5, None, 10.0]
    assert list(ready.results[1].statuses) == [
        m.FEATURE_STATUS_EXPIRED,
        m.FEATURE_STATUS_EXPIRED,
        m.FEATURE_STATUS_NOT_FOUND,
    ]
    plan = await cache.plan(f"uw_{s}", ())
    [run] = online_reply.ready_runs(plan)
    index = replica.vectors.index_for(run.shape)
    assert index is not None and {"L1", "L2", "L3"} <= set(index.entries)
    assert "L4" not in index.entries  # no rows: nothing kept

    await push(f"profile_{s}", ["L1"], [timedelta(hours=2)], c=[11.0])
    await replica.catch_up()
    ready, from_postgres = await both()
    assert ready == from_postgres
    assert [python(v) for v in ready.results[4].values] == [1.5, None, 11.0]


async def test_mixed_services_read_ready_runs_beside_stream_and_other_entity_views(
    features: FeatureStoreStub,
    without_replica: FeatureStoreStub,
    replica: OnlineReplica,
    db_pool: asyncpg.Pool,
) -> None:
    """A service over loan views, a stream view and a borrower view keeps a ready run per
    stretch of stored views of one entity; its replies equal Postgres-only ones."""
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    borrower = Entity(f"borrower_{s}", join_key="borrower_id")

    def push_view(name: str, entity: Entity, ttl: timedelta | None = None) -> FeatureView:
        return FeatureView(
            f"{name}_{s}",
            entity=entity,
            source=PushSource(),
            ttl=ttl,
            features=[Field("x", Float64)],
        )

    stream = FeatureView(
        f"activity_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="at"),
        aggregations=[Aggregation("amount", "sum", timedelta(days=1), "amount_sum_1d")],
    )
    views = [
        push_view("terms", loan, timedelta(days=1)),
        push_view("rates", loan),
        stream,
        push_view("income", borrower),
        push_view("score", loan),
    ]
    service = FeatureService(f"mixed_{s}", [f"{v.name}:*" for v in views])
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, borrower, *views, service]))
    )

    async def push(view: str, key: str, keys: list[str], ages: list[int], xs: list) -> None:
        await features.PushFeatures(
            rr.PushFeaturesRequest(
                feature_view=f"{view}_{s}",
                columns={
                    key: column(keys),
                    "event_time": column([NOW - timedelta(hours=age) for age in ages]),
                    "x": column(xs),
                },
            )
        )

    await push("terms", "loan_id", ["L1", "L2"], [1, 30], [1.0, 2.0])
    await push("rates", "loan_id", ["L2"], [1], [3.0])
    await push("income", "borrower_id", ["B1"], [5], [4.0])
    await push("score", "loan_id", ["L1"], [2], [None])
    await replica.catch_up()
    cache = DefinitionsCache(DefinitionQueries(db_pool))
    reader = OnlineReader(db_pool, cache, replica)
    entities = {"loan_id": column(["L1", "L2", "L3"]), "borrower_id": column(["B1", "B2", "B1"])}

    async def both() -> tuple[rr.GetOnlineFeaturesResponse, rr.GetOnlineFeaturesResponse]:
        ready = await reader.read(
            feature_service=f"mixed_{s}", references=(), entities=entities, request_data={}
        )
        from_postgres = await without_replica.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(feature_service=f"mixed_{s}", entities=entities)
        )
        return rr.GetOnlineFeaturesResponse.FromString(ready), from_postgres

    ready, from_postgres = await both()
    assert ready == from_postgres
    assert [python(v) for v in ready.results[0].values] == [1.0, None, None, 4.0, None]
    assert ready.results[1].statuses[0] == m.FEATURE_STATUS_EXPIRED
    runs = online_reply.ready_runs(await cache.plan(f"mixed_{s}", ()))
    assert [(run.first, len(run.shape)) for run in runs] == [(0, 2), (3, 1), (4, 1)]
    for run in runs:
        index = replica.vectors.index_for(run.shape)
        assert index is not None and index.entries  # every run kept its parts

    await push("income", "borrower_id", ["B1"], [1], [5.0])
    await replica.catch_up()
    ready, from_postgres = await both()
    assert ready == from_postgres
    assert python(ready.results[2].values[3]) == 5.0


async def test_rows_of_the_future_agree_from_memory_postgres_and_ready_entries(
    features: FeatureStoreStub,
    without_replica: FeatureStoreStub,
    db_pool: asyncpg.Pool,
) -> None:
    """A row pushed ahead of its event time is served by every read path from that time
    on, and not before; the promotion pass moves it into the current rows without
    changing any answer; statistics count only what is true now (ADR 0019)."""
    s = suffix()
    now = datetime.now(UTC)
    soon, next_month = now + timedelta(seconds=2), now + timedelta(days=30)
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(f"fut_{s}", entity=loan, source=PushSource(), features=[Field("v", Float64)])
    service = FeatureService(f"svc_{s}", [f"fut_{s}:*"])
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view, service]))
    )
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"fut_{s}",
            columns={
                "loan_id": column(["L1", "L1", "L1", "L2"]),
                "event_time": column([now - timedelta(hours=1), soon, next_month, soon]),
                "v": column([1.0, 2.0, 3.0, 4.0]),
            },
        )
    )
    keys = column(["L1", "L2", "L3"])
    by_list = rr.GetOnlineFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"fut_{s}:v"]), entities={"loan_id": keys}
    )
    by_service = rr.GetOnlineFeaturesRequest(feature_service=f"svc_{s}", entities={"loan_id": keys})

    async def answers() -> list[tuple[object, int]]:
        replies = [
            await features.GetOnlineFeatures(by_list),
            await features.GetOnlineFeatures(by_service),  # ready entries
            await without_replica.GetOnlineFeatures(by_list),
            await without_replica.GetOnlineFeatures(by_service),
        ]
        assert all(reply == replies[0] for reply in replies[1:]), replies
        return [(python(r.values[0]), r.statuses[0]) for r in replies[0].results]

    async def statistics() -> tuple[int, float]:
        stats = await features.GetFeatureStatistics(
            rr.GetFeatureStatisticsRequest(feature_view=f"fut_{s}")
        )
        return stats.features[0].count, stats.features[0].mean

    present, missing = m.FEATURE_STATUS_PRESENT, m.FEATURE_STATUS_NOT_FOUND
    assert await answers() == [(1.0, present), (None, missing), (None, missing)]
    assert await statistics() == (1, 1.0)
    await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.01)
    assert await answers() == [(2.0, present), (4.0, present), (None, missing)]
    assert await statistics() == (2, 3.0)

    assert await PendingPromoter(db_pool).promote() >= 2
    pending = await db_pool.fetch(
        "SELECT entity_key, event_time FROM feature_store.online_pending WHERE view = $1",
        f"fut_{s}",
    )
    assert [(r["entity_key"], r["event_time"]) for r in pending] == [("L1", next_month)]
    current = await db_pool.fetch(
        "SELECT entity_key, event_time FROM feature_store.online_values WHERE view = $1 "
        "ORDER BY entity_key",
        f"fut_{s}",
    )
    assert [(r["entity_key"], r["event_time"]) for r in current] == [("L1", soon), ("L2", soon)]
    await asyncio.sleep(0.2)  # the replicas apply the promotion's change
    assert await answers() == [(2.0, present), (4.0, present), (None, missing)]
