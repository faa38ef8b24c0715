"""Plan and apply feature definitions against a real feature store."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import grpc
import pytest

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    Range,
    StreamSource,
    String,
    on_demand_feature_view,
    repository_of,
)

A = m.ChangeAction


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


async def _sources(db_pool: asyncpg.Pool, suffix: str) -> None:
    """The batch source tables of ``_definitions``: batch views are applied only over a
    table that can feed them (a numeric interest rate, and a text one for version 2)."""
    for table, rate in ((f"loans_{suffix}", "double precision"), (f"loans_{suffix}_text", "text")):
        await db_pool.execute(
            f"CREATE TABLE public.{table} (loan_id text, issued_at timestamptz, "
            f"interest_rate {rate}, term bigint, grade text)"
        )


def _definitions(suffix: str, *, rate_type: int = Float64, version: int = 1, extra: bool = False):
    loan = Entity(f"loan_{suffix}", join_key="loan_id")
    rate_rules = [Range(0, 40)] if rate_type in (Float64, Int64) else []
    fields = [Field("interest_rate", rate_type, rate_rules), Field("term", Int64)]
    if extra:
        fields.append(Field("grade", String))
    terms = FeatureView(
        f"terms_{suffix}",
        entity=loan,
        source=BatchSource(
            f"public.loans_{suffix}_text" if rate_type == String else f"public.loans_{suffix}",
            event_time_column="issued_at",
        ),
        features=fields,
        ttl=timedelta(days=365),
        version=version,
    )
    payments = FeatureView(
        f"payments_{suffix}",
        entity=loan,
        source=StreamSource("payments", event_time_field="paid_at"),
        aggregations=[Aggregation("amount", "sum", timedelta(days=7), "amount_sum_7d")],
    )

    @on_demand_feature_view(
        inputs=[f"terms_{suffix}:interest_rate"],
        request_fields=[Field("requested_amount", Float64)],
        features=[Field("monthly_interest", Float64)],
        name=f"monthly_{suffix}",
    )
    def monthly_interest(row: dict) -> dict:
        return {"monthly_interest": row["requested_amount"] * 1.0}

    service = FeatureService(
        f"underwriting_{suffix}", [f"terms_{suffix}:*", f"payments_{suffix}:*"]
    )
    return repository_of([loan, terms, payments, monthly_interest, service])


def _actions(changes: list[m.DefinitionChange], suffix: str) -> dict[str, int]:
    """This test's changes (other tests' definitions show as NOT_IN_REPOSITORY)."""
    return {
        f"{c.kind}:{c.name.rsplit('_', 1)[0]}": c.action for c in changes if c.name.endswith(suffix)
    }


async def test_plan_apply_and_read_back(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> None:
    suffix = _suffix()
    await _sources(db_pool, suffix)
    repository = _definitions(suffix)

    plan = await features.PlanDefinitions(rr.PlanDefinitionsRequest(repository=repository))
    assert plan.applicable
    assert set(_actions(plan.changes, suffix).values()) >= {A.CHANGE_ACTION_CREATE}
    assert [
        c for c in plan.changes if c.name.endswith(suffix) and c.action != A.CHANGE_ACTION_CREATE
    ] == []

    await features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository))
    again = await features.PlanDefinitions(rr.PlanDefinitionsRequest(repository=repository))
    mine = [c for c in again.changes if c.name.endswith(suffix)]
    assert {c.action for c in mine} == {A.CHANGE_ACTION_UNCHANGED}

    stream_view = (
        await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"payments_{suffix}"))
    ).feature_view
    assert [(f.name, f.type) for f in stream_view.features] == [
        ("amount_sum_7d", m.VALUE_TYPE_FLOAT64)
    ]
    assert stream_view.tile_size.seconds == 60
    listed = await features.ListFeatureViews(rr.ListFeatureViewsRequest(page_size=1000))
    assert {f"terms_{suffix}", f"payments_{suffix}"} <= {v.name for v in listed.feature_views}


async def test_compatible_change_updates_and_breaking_change_needs_a_version(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    suffix = _suffix()
    await _sources(db_pool, suffix)
    await features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=_definitions(suffix)))

    appended = await features.PlanDefinitions(
        rr.PlanDefinitionsRequest(repository=_definitions(suffix, extra=True))
    )
    assert _actions(appended.changes, suffix)["feature_view:terms"] == A.CHANGE_ACTION_UPDATE
    assert appended.applicable

    retyped = _definitions(suffix, rate_type=String)
    plan = await features.PlanDefinitions(rr.PlanDefinitionsRequest(repository=retyped))
    blocked = [c for c in plan.changes if c.blocked]
    assert not plan.applicable
    assert [c.name for c in blocked] == [f"terms_{suffix}"]
    assert "interest_rate: VALUE_TYPE_FLOAT64 -> VALUE_TYPE_STRING" in blocked[0].details[0]
    assert "version=2" in blocked[0].details[0]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=retyped))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing was applied" in refused.value.details()

    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=_definitions(suffix, rate_type=String, version=2))
    )
    view = await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"terms_{suffix}"))
    assert list(view.versions) == [1, 2]
    assert view.feature_view.features[0].type == m.VALUE_TYPE_STRING
    first = await features.GetFeatureView(
        rr.GetFeatureViewRequest(name=f"terms_{suffix}", version=1)
    )
    assert first.feature_view.features[0].type == m.VALUE_TYPE_FLOAT64


def _with(repository: m.FeatureRepository, mutate) -> m.FeatureRepository:  # type: ignore[no-untyped-def]
    copy = m.FeatureRepository()
    copy.CopyFrom(repository)
    mutate(copy)
    return copy


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda r: setattr(r.feature_views[0], "entity", "nobody"), "unknown entity"),
        (lambda r: r.feature_views.append(r.feature_views[0]), "defined twice"),
        (lambda r: setattr(r.feature_views[0], "name", "Loans"), "not a valid name"),
        (lambda r: setattr(r.feature_views[0], "name", "x; DROP TABLE t"), "not a valid name"),
        (
            lambda r: setattr(r.feature_views[0].batch_source, "table", 'public."loans"; --'),
            "not a valid name",
        ),
        (
            lambda r: setattr(r.feature_views[0].batch_source, "event_time_column", "t1 OR 1=1"),
            "not a valid name",
        ),
        (lambda r: setattr(r.feature_views[0].features[0], "type", 0), "needs a type"),
        (
            lambda r: r.feature_views[1].aggregations[0].window.FromSeconds(90),
            "multiple of the tile",
        ),
        (lambda r: setattr(r.on_demand_views[0], "source_code", "def broken(:"), "does not load"),
        (lambda r: r.feature_services[0].features.append("ghost:*"), "unknown feature view"),
        (lambda r: r.feature_services[0].features.append("not a reference"), "must look like"),
    ],
    ids=[
        "unknown-entity",
        "duplicate",
        "uppercase",
        "injection-name",
        "injection-table",
        "injection-column",
        "untyped",
        "window",
        "bad-code",
        "unknown-reference",
        "bad-reference",
    ],
)
async def test_bad_definitions_are_invalid_and_apply_nothing(
    features: FeatureStoreStub,
    db_pool: asyncpg.Pool,
    mutate,
    fragment: str,  # type: ignore[no-untyped-def]
) -> None:
    suffix = _suffix()
    await _sources(db_pool, suffix)
    repository = _with(_definitions(suffix), mutate)

    for call in (
        features.PlanDefinitions(rr.PlanDefinitionsRequest(repository=repository)),
        features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in raised.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"payments_{suffix}"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
