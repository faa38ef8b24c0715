"""Batch materialization from a real Postgres table: incremental, resumable, bitemporal."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.features import BatchSource, Entity, FeatureView, Field, Float64, Int64, repository_of
from services.feature_store.app.writes import materialize
from tests.feature_store.helpers import column, python, suffix

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _setup(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> tuple[str, str]:
    s = suffix()
    table = f"loans_{s}"
    await db_pool.execute(
        f"""CREATE TABLE public.{table} (
                loan_id text, issued_at timestamptz, ingested_at timestamptz,
                interest_rate numeric(5, 2), term integer)"""
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"terms_{s}",
        entity=loan,
        source=BatchSource(
            f"public.{table}", event_time_column="issued_at", created_time_column="ingested_at"
        ),
        features=[Field("interest_rate", Float64), Field("term", Int64)],
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
    )
    return table, f"terms_{s}"


async def _insert(db_pool: asyncpg.Pool, table: str, rows: list[tuple]) -> None:
    await db_pool.executemany(f"INSERT INTO public.{table} VALUES ($1, $2, $3, $4, $5)", rows)


async def _materialize(features: FeatureStoreStub, view: str) -> list[rr.MaterializeProgress]:
    return [
        r.progress async for r in features.Materialize(rr.MaterializeRequest(feature_view=view))
    ]


async def _online(features: FeatureStoreStub, view: str, keys: list[str]) -> list[list[object]]:
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{view}:*"]), entities={"loan_id": column(keys)}
        )
    )
    return [[python(v) for v in r.values] for r in response.results]


async def test_incremental_runs_read_only_new_rows_and_keep_the_latest_online(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    table, view = await _setup(features, db_pool)
    await _insert(
        db_pool,
        table,
        [
            ("L1", T0, T0, 7.5, 36),
            ("L1", T0 + timedelta(days=30), T0 + timedelta(days=30), 8.0, 36),
            ("L2", T0, T0 + timedelta(hours=1), 12.25, 60),
        ],
    )

    first = await _materialize(features, view)
    assert first[-1].done and first[-1].rows_read == 3 and first[-1].rows_total == 3
    assert await _online(features, view, ["L1", "L2"]) == [[8.0, 36], [12.25, 60]]

    again = await _materialize(features, view)
    assert again[-1].rows_read == 0

    # A late correction of L1's first rate: old event time, known only now.
    late = datetime.now(UTC) - timedelta(minutes=1)
    await _insert(db_pool, table, [("L1", T0, late, 7.75, 36), ("L3", T0, late, 5.0, 36)])
    third = await _materialize(features, view)
    assert third[-1].rows_read == 2
    assert await _online(features, view, ["L1", "L3"]) == [[8.0, 36], [5.0, 36]], (
        "an older event time must not replace the latest value online"
    )
    logged = await db_pool.fetch(
        f"""SELECT entity_key, event_time, created_time FROM feature_store."log_{view}_v1"
            ORDER BY 1, 2, 3"""
    )
    assert len(logged) == 5, "each source row is logged once, with its own known-at time"
    assert logged[1]["created_time"] == late

    events = await db_pool.fetch(
        "SELECT payload FROM feature_store.events WHERE stream_id = $1 AND event_type = $2",
        f"materialization-{view}",
        "lathe.feature_store.v1.MaterializationCompleted",
    )
    completed = [events_pb2.MaterializationCompleted.FromString(e["payload"]) for e in events]
    assert [c.rows_written for c in completed] == [3, 2], "the empty rerun recorded no run"
    stats = {s.feature: s for s in completed[0].statistics}
    assert stats["interest_rate"].count == 3 and stats["interest_rate"].max == pytest.approx(12.25)


async def test_an_interrupted_run_resumes_without_duplicates(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(materialize, "PAGE_ROWS", 4)
    table, view = await _setup(features, db_pool)
    rows = [
        (f"L{i % 5}", T0 + timedelta(hours=i), T0 + timedelta(hours=i), float(i), 36)
        for i in range(20)
    ]
    await _insert(db_pool, table, rows)

    call = features.Materialize(rr.MaterializeRequest(feature_view=view))
    async for response in call:
        assert not response.progress.done
        break  # the client goes away after the first committed page
    call.cancel()

    # The server notices the cancelled call and releases its run lock a moment later.
    for _ in range(50):
        try:
            rest = await _materialize(features, view)
            break
        except grpc.aio.AioRpcError as busy:
            assert busy.code() == grpc.StatusCode.ABORTED, busy.details()
            await asyncio.sleep(0.1)
    logged = await db_pool.fetchval(f'SELECT count(*) FROM feature_store."log_{view}_v1"')
    assert logged == 20
    assert rest[-1].done and rest[-1].rows_read < 20


async def test_materialize_refuses_what_it_cannot_do(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    table, view = await _setup(features, db_pool)
    await db_pool.execute(f"ALTER TABLE public.{table} ALTER COLUMN term TYPE text")
    await _insert(db_pool, table, [("L1", T0, T0, 7.5, "thirty-six")])

    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await _materialize(features, view)
    assert mismatch.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not match its definition" in mismatch.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _materialize(features, "nope_view")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
