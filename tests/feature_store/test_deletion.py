"""Deleting and deprecating definitions as events (ADR 0022), against the real host.

A definition in use (selected by a feature service, read by an on-demand view) cannot be
deleted, and the refusal names what uses it; once nothing does, it is deleted for good
(reads, lists, writes and re-applies of the same version all say so); deprecated views
keep serving and every read of them says so in its trailing metadata, in the SDK as a
warning, and in the service log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import asyncpg
import grpc
import pyarrow as pa
import pytest

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.feature_store import FeatureDeprecationWarning, FeatureStoreClient
from libs.sdk.features import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    PushSource,
    StreamSource,
    on_demand_feature_view,
    repository_of,
)
from services.feature_store.store.definitions import DefinitionQueries
from tests.feature_store.helpers import column, suffix

NOW = datetime.now(UTC)


def _definitions(s: str, version: int = 1) -> list[object]:
    loan = Entity(f"loan_{s}", join_key="loan_id")
    scores = FeatureView(
        f"scores_{s}",
        entity=loan,
        source=PushSource(),
        features=[Field("score", Float64)],
        version=version,
    )
    payments = FeatureView(
        f"pay_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="at"),
        aggregations=[Aggregation("amount", "sum", timedelta(days=1), "amount_1d")],
    )

    @on_demand_feature_view(
        inputs=[f"scores_{s}:score"], features=[Field("double", Float64)], name=f"twice_{s}"
    )
    def twice(row):  # type: ignore[no-untyped-def]
        value = row[next(iter(row))]
        return {"double": None if value is None else value * 2}

    service = FeatureService(f"model_{s}", [f"scores_{s}:*", f"pay_{s}:*"])
    return [loan, scores, payments, twice, service]


async def _apply(features: FeatureStoreStub, objects: list[object]) -> None:
    await features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository_of(objects)))


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value.code(), raised.value.details() or ""


def _delete(kind: str, name: str, reason: str = "") -> rr.DeleteDefinitionRequest:
    return rr.DeleteDefinitionRequest(kind=kind, name=name, reason=reason)


async def test_a_view_in_use_cannot_be_deleted_and_can_once_nothing_uses_it(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    await _apply(features, _definitions(s))
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"scores_{s}",
            columns={
                "loan_id": column(["L1"]),
                "event_time": column([NOW - timedelta(hours=1)]),
                "score": column([0.5]),
            },
        )
    )

    code, details = await _refused(
        features.DeleteDefinition(_delete("feature_view", f"scores_{s}"))
    )

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"feature service 'model_{s}'" in details and f"on-demand view 'twice_{s}'" in details
    assert "nothing was deleted" in details
    assert (await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"scores_{s}"))).versions

    await features.DeleteDefinition(_delete("feature_service", f"model_{s}"))
    code, details = await _refused(
        features.DeleteDefinition(_delete("feature_view", f"scores_{s}"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"on-demand view 'twice_{s}'" in details and "feature service" not in details

    await features.DeleteDefinition(_delete("on_demand_view", f"twice_{s}"))
    deleted = await features.DeleteDefinition(_delete("feature_view", f"scores_{s}"))

    assert deleted.last_version == 1
    code, _ = await _refused(features.GetFeatureView(rr.GetFeatureViewRequest(name=f"scores_{s}")))
    assert code == grpc.StatusCode.NOT_FOUND
    # What it stored is kept (its offline log), only no longer served.
    assert await db_pool.fetchval(f'SELECT count(*) FROM feature_store."log_scores_{s}_v1"') == 1


async def test_deletion_order_and_what_a_deleted_view_answers(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    await _apply(features, _definitions(s))
    for kind, name in [("feature_service", f"model_{s}"), ("on_demand_view", f"twice_{s}")]:
        reply = await features.DeleteDefinition(_delete(kind, name, "superseded"))
        assert reply.last_version == 1

    reply = await features.DeleteDefinition(_delete("feature_view", f"scores_{s}", "replaced"))

    assert reply.last_version == 1
    events = await db_pool.fetch(
        "SELECT event_type FROM feature_store.events WHERE stream_id = $1 ORDER BY stream_version",
        f"feature_view-scores_{s}",
    )
    assert [e["event_type"].rsplit(".", 1)[1] for e in events] == [
        "FeatureViewDefined",
        "DefinitionDeleted",
    ]
    for call, code in [
        (features.GetFeatureView(rr.GetFeatureViewRequest(name=f"scores_{s}")), "NOT_FOUND"),
        (
            features.GetOnlineFeatures(
                rr.GetOnlineFeaturesRequest(
                    feature_list=rr.FeatureList(features=[f"scores_{s}:*"]),
                    entities={"loan_id": column(["L1"])},
                )
            ),
            "NOT_FOUND",
        ),
        (
            features.GetOnlineFeatures(
                rr.GetOnlineFeaturesRequest(
                    feature_service=f"model_{s}", entities={"loan_id": column(["L1"])}
                )
            ),
            "NOT_FOUND",
        ),
        (
            features.PushFeatures(
                rr.PushFeaturesRequest(
                    feature_view=f"scores_{s}",
                    columns={
                        "loan_id": column(["L1"]),
                        "event_time": column([NOW]),
                        "score": column([1.0]),
                    },
                )
            ),
            "NOT_FOUND",
        ),
        (features.DeleteDefinition(_delete("feature_view", f"scores_{s}")), "NOT_FOUND"),
        (features.DeleteDefinition(_delete("entity", f"loan_{s}")), "INVALID_ARGUMENT"),
        (features.DeleteDefinition(_delete("feature_view", "Bad Name")), "INVALID_ARGUMENT"),
        (
            features.DeprecateDefinition(
                rr.DeprecateDefinitionRequest(kind="feature_view", name=f"pay_{s}")
            ),
            "INVALID_ARGUMENT",  # no reason given
        ),
    ]:
        assert (await _refused(call))[0].name == code
    listed = await features.ListFeatureViews(rr.ListFeatureViewsRequest(page_size=1000))
    assert f"scores_{s}" not in {v.name for v in listed.feature_views}
    assert f"pay_{s}" in {v.name for v in listed.feature_views}

    # The repository still declaring version 1 is refused; version 2 re-creates it.
    code, details = await _refused(
        features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository_of(_definitions(s)[:3]))
        )
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "was deleted at version 1: re-create it as version 2" in details
    await _apply(features, _definitions(s, version=2)[:3])
    again = await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"scores_{s}"))
    assert again.feature_view.version == 2 and list(again.versions) == [2]
    code, _ = await _refused(
        features.GetFeatureView(rr.GetFeatureViewRequest(name=f"scores_{s}", version=1))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def test_deprecated_definitions_serve_and_warn_on_every_read(
    features: FeatureStoreStub,
    db_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = suffix()
    await _apply(features, _definitions(s))
    generation = await DefinitionQueries(db_pool).generation()
    await features.DeprecateDefinition(
        rr.DeprecateDefinitionRequest(
            kind="feature_view", name=f"pay_{s}", reason="use pay_v2 — it counts refunds"
        )
    )
    assert await DefinitionQueries(db_pool).generation() > generation  # replicas refresh
    view = await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"pay_{s}"))
    assert view.deprecation == "use pay_v2 — it counts refunds"

    request = rr.GetOnlineFeaturesRequest(
        feature_service=f"model_{s}", entities={"loan_id": column(["L1"])}
    )
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            call = features.GetOnlineFeatures(request)
            reply = await call
            trailing = [
                unquote(v) for k, v in await call.trailing_metadata() if k == "lathe-deprecation"
            ]
            assert trailing == [f"feature_view pay_{s}: use pay_v2 — it counts refunds"]
    assert reply.results[0].statuses[0] == m.FEATURE_STATUS_NOT_FOUND  # still served
    logged = [r for r in caplog.records if "deprecated definitions" in r.getMessage()]
    assert len(logged) == 1 and f"pay_{s}" in logged[0].getMessage()  # once per plan

    client = FeatureStoreClient(features)
    with pytest.warns(FeatureDeprecationWarning, match=f"feature_view pay_{s}: use pay_v2"):
        await client.get_online_features({"loan_id": ["L1"]}, f"model_{s}")
    labels = pa.table(
        {"loan_id": ["L1"], "event_time": pa.array([NOW], pa.timestamp("us", tz="UTC"))}
    )
    with pytest.warns(FeatureDeprecationWarning, match=f"pay_{s}"):
        await client.get_historical_features(labels, features=[f"pay_{s}:amount_1d"])

    # A deprecated service warns too; lifting ends the warnings.
    await client.deprecate("feature_service", f"model_{s}", "retrain on model_v2")
    call = features.GetOnlineFeatures(request)
    await call
    assert [unquote(v) for k, v in await call.trailing_metadata() if k == "lathe-deprecation"] == [
        f"feature_service model_{s}: retrain on model_v2",
        f"feature_view pay_{s}: use pay_v2 — it counts refunds",
    ]
    await client.deprecate("feature_service", f"model_{s}", lift=True)
    await client.deprecate("feature_view", f"pay_{s}", lift=True)
    call = features.GetOnlineFeatures(request)
    await call
    assert not [k for k, _ in await call.trailing_metadata() if k == "lathe-deprecation"]
    view = await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"pay_{s}"))
    assert view.deprecation == ""
