"""Batch sources from a read-only SQL query, with a field mapping (ADR 0022), on real Postgres.

Valid SELECTs (joins, read-only WITH, VALUES-free projections, renamed columns) feed a view
exactly like a table; anything else — a write, two statements, a row lock, a writing
WITH, SELECT ... INTO, a function that writes — is refused at plan and apply with a
message saying what to change, and nothing it would have written was written.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pyarrow as pa
import pytest

from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.features import BatchSource, Entity, FeatureView, Field, Float64, Int64, repository_of
from services.feature_store.store import sources
from tests.feature_store.helpers import column, python, suffix

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def _tables(db_pool: asyncpg.Pool, s: str) -> None:
    await db_pool.execute(
        f"""CREATE TABLE public.loans_{s} (
                loan_id text, grade text, issued_at timestamptz, amount numeric(12, 2));
            CREATE TABLE public.rates_{s} (grade text, apr double precision, term bigint);
            CREATE TABLE public.audit_{s} (note text);
            INSERT INTO public.rates_{s} VALUES ('A', 5.5, 36), ('B', 9.25, 60);
            CREATE FUNCTION public.noisy_{s}() RETURNS integer LANGUAGE sql VOLATILE
                AS $$ INSERT INTO public.audit_{s} VALUES ('called'); SELECT 1 $$;
            CREATE FUNCTION public.quiet_{s}() RETURNS integer LANGUAGE sql VOLATILE
                AS $$ SELECT 1 $$;"""
    )
    await db_pool.executemany(
        f"INSERT INTO public.loans_{s} VALUES ($1, $2, $3, $4)",
        [
            ("L1", "A", T0, 1000.5),
            ("L1", "B", T0 + timedelta(days=2), 2000),
            ("L2", "B", T0 + timedelta(days=1), 300.25),
        ],
    )


def _view(s: str, query: str, **mapping: str) -> tuple[Entity, FeatureView]:
    loan = Entity(f"loan_{s}", join_key="loan_id")
    return loan, FeatureView(
        f"terms_{s}",
        entity=loan,
        source=BatchSource(query=query, event_time_column="issued_at", field_mapping=mapping),
        features=[Field("interest_rate", Float64), Field("term", Int64), Field("amount", Float64)],
    )


async def test_a_select_with_a_field_mapping_feeds_a_view_like_a_table(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    await _tables(db_pool, s)
    query = f"""
        WITH graded AS (SELECT * FROM public.loans_{s} WHERE amount > 0)  -- read-only WITH
        SELECT g.loan_id, g.issued_at, r.apr, r.term, g.amount, public.quiet_{s}() AS q
        FROM graded g JOIN public.rates_{s} r USING (grade)
        ORDER BY g.issued_at  -- a trailing comment
        ;"""
    loan, view = _view(s, query, apr="interest_rate")
    repository = repository_of([loan, view])
    plan = await features.PlanDefinitions(rr.PlanDefinitionsRequest(repository=repository))
    assert plan.applicable, [c.details for c in plan.changes]
    await features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository))
    applied = (
        await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"terms_{s}"))
    ).feature_view
    assert applied.batch_source.query.endswith("-- a trailing comment")  # the ';' went
    assert dict(applied.batch_source.field_mapping) == {"apr": "interest_rate"}

    progress = [
        r.progress
        async for r in features.Materialize(rr.MaterializeRequest(feature_view=f"terms_{s}"))
    ]
    assert progress[-1].done and progress[-1].rows_written == 3
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"terms_{s}:*"]),
            entities={"loan_id": column(["L1", "L2"])},
        )
    )
    assert [[python(v) for v in r.values] for r in response.results] == [
        [9.25, 60, 2000.0],
        [9.25, 60, 300.25],
    ]
    labels = pa.table(
        {
            "loan_id": ["L1"],
            "event_time": pa.array([T0 + timedelta(days=1)], pa.timestamp("us", tz="UTC")),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, labels.schema) as writer:
        writer.write_table(labels)
    parts = [
        p.arrow_ipc
        async for p in features.GetHistoricalFeatures(
            rr.GetHistoricalFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"terms_{s}:interest_rate"]),
                entity_rows_arrow=sink.getvalue().to_pybytes(),
            )
        )
        if not p.HasField("snapshot")
    ]
    training = pa.ipc.open_stream(b"".join(parts)).read_all()
    assert training.column(f"terms_{s}:interest_rate").to_pylist() == [5.5]
    # Nothing was written along the way (the quiet function only reads).
    assert await db_pool.fetchval(f"SELECT count(*) FROM public.audit_{s}") == 0


_LOANS = "public.loans_{s}"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "INSERT INTO public.audit_{s} VALUES ('x') RETURNING note AS loan_id",
            "writes rows",
        ),
        (
            "UPDATE public.loans_{s} SET amount = 0 RETURNING loan_id, issued_at",
            "writes rows",
        ),
        ("DELETE FROM public.loans_{s} RETURNING loan_id, issued_at", "writes rows"),
        (
            "SELECT loan_id, issued_at FROM public.loans_{s}; DROP TABLE public.audit_{s}",
            "more than one statement",
        ),
        ("SELECT loan_id, issued_at FROM public.loans_{s} FOR UPDATE", "locks rows"),
        ("SELECT loan_id, issued_at FROM public.loans_{s} FOR SHARE SKIP LOCKED", "locks rows"),
        (
            "WITH gone AS (DELETE FROM public.loans_{s} RETURNING *) "
            "SELECT loan_id, issued_at FROM gone",
            "writes rows",
        ),
        ("SELECT loan_id, issued_at INTO public.copy_{s} FROM public.loans_{s}", "SELECT ... INTO"),
        (
            "SELECT loan_id, issued_at, public.noisy_{s}() AS n FROM public.loans_{s}",
            "tried to write when run read-only",
        ),
        ("DROP TABLE public.audit_{s}", "not one SELECT"),
        ("CREATE TABLE public.other_{s} AS SELECT 1", "not a plain SELECT"),
        ("SELECT loan_id, issued_at FROM public.loans_{s} WHERE amount > $1", "parameter"),
        ("SELECT loan_id FROM public.loans_{s}", "no column 'issued_at'"),
        ("SELECT loan_id, issued_at, amount::numeric AS apr FROM public.loans_{s}", "numeric"),
        ("SELECT * FROM public.missing_{s}", "does not exist"),
        (
            "SELECT loan_id, issued_at FROM public.loans_{s}; -- a comment after it",
            "remove the semicolon",
        ),
    ],
)
async def test_anything_but_one_read_only_select_is_refused_with_what_to_change(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, query: str, message: str
) -> None:
    s = suffix()
    await _tables(db_pool, s)
    loan, view = _view(s, query.format(s=s), apr="interest_rate")
    repository = repository_of([loan, view])

    plan = await features.PlanDefinitions(rr.PlanDefinitionsRequest(repository=repository))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository))

    assert not plan.applicable
    [change] = [c for c in plan.changes if c.name == f"terms_{s}"]
    assert change.blocked and message in " ".join(change.details), change.details
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert message in refused.value.details()
    # Nothing it would have written was: rows, tables and the function's audit row.
    assert await db_pool.fetchval(f"SELECT count(*) FROM public.loans_{s}") == 3
    assert await db_pool.fetchval(f"SELECT count(*) FROM public.audit_{s}") == 0
    assert await db_pool.fetchval(f"SELECT sum(amount) FROM public.loans_{s}") == 3300.75
    assert await db_pool.fetchval("SELECT to_regclass($1)", f"public.copy_{s}") is None
    assert await db_pool.fetchval("SELECT to_regclass($1)", f"public.other_{s}") is None
    missing = await features.ListFeatureViews(rr.ListFeatureViewsRequest(page_size=1000))
    assert f"terms_{s}" not in [v.name for v in missing.feature_views]


async def test_a_query_that_turns_to_writing_or_is_too_slow_stops_materialize(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = suffix()
    await _tables(db_pool, s)
    query = (
        f"SELECT l.loan_id, l.issued_at, r.apr, r.term, l.amount, public.quiet_{s}() AS q "
        f"FROM public.loans_{s} l JOIN public.rates_{s} r USING (grade)"
    )
    loan, view = _view(s, query, apr="interest_rate")
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
    )
    # The function it calls now writes: the read-only transaction refuses it.
    await db_pool.execute(
        f"""CREATE OR REPLACE FUNCTION public.quiet_{s}() RETURNS integer LANGUAGE sql VOLATILE
            AS $$ INSERT INTO public.audit_{s} VALUES ('called'); SELECT 1 $$"""
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in features.Materialize(rr.MaterializeRequest(feature_view=f"terms_{s}")):
            pass
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tried to write" in refused.value.details()
    assert await db_pool.fetchval(f"SELECT count(*) FROM public.audit_{s}") == 0

    # A slow query: each statement a materialization runs has a deadline.
    await db_pool.execute(
        f"""CREATE OR REPLACE FUNCTION public.quiet_{s}() RETURNS integer LANGUAGE sql VOLATILE
            AS $$ SELECT 1 FROM pg_sleep(0.3) $$"""
    )
    monkeypatch.setattr(sources, "QUERY_PROBE_TIMEOUT_S", 0.1)  # too slow to probe: not refused
    monkeypatch.setattr(sources, "QUERY_TIMEOUT_S", 0.5)
    with pytest.raises(grpc.aio.AioRpcError) as slow:
        async for _ in features.Materialize(rr.MaterializeRequest(feature_view=f"terms_{s}")):
            pass
    assert slow.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "did not answer within 0.5s" in slow.value.details()


async def test_field_mappings_are_checked(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    await _tables(db_pool, s)
    query = f"SELECT loan_id, issued_at, amount FROM public.loans_{s}"
    for mapping, message, code in [
        ({"apr": "nothing"}, "not one of its features", grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"apr": "amount", "amount": "amount"},
            "maps two columns to 'amount'",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        ({"Bad Column": "amount"}, "field_mapping column", grpc.StatusCode.INVALID_ARGUMENT),
        ({"apr": "interest_rate"}, "no column 'apr' (feature 'interest_rate')", None),
    ]:
        loan, view = _view(s, query, **mapping)
        repository = repository_of([loan, view])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository))
        assert refused.value.code() == (code or grpc.StatusCode.FAILED_PRECONDITION)
        assert message in refused.value.details(), refused.value.details()
    both = FeatureView(
        f"both_{s}",
        entity=Entity(f"loan_{s}", join_key="loan_id"),
        source=BatchSource(table=f"public.loans_{s}", query=query, event_time_column="issued_at"),
        features=[Field("amount", Float64)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository_of([both]))
        )
    assert "set one of batch_source.table" in refused.value.details()
