"""Statistics of online values and drift (PSI) from a training snapshot."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import grpc
import pyarrow as pa
import pytest

from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.features import Entity, FeatureView, Field, Float64, PushSource, Range, repository_of
from tests.feature_store.helpers import column, suffix


async def _push(features: FeatureStoreStub, view: str, values: list[float], at: datetime) -> None:
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=view,
            columns={
                "loan_id": column([f"L{i}" for i in range(len(values))]),
                "event_time": column([at] * len(values)),
                "income": column(values),
                "dti": column([v / 100_000 for v in values]),
            },
        )
    )


async def test_drift_from_a_training_snapshot(features: FeatureStoreStub) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"income_{s}",
        entity=loan,
        source=PushSource(),
        features=[Field("income", Float64, [Range(0, 1_000_000)]), Field("dti", Float64)],
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
    )
    rng = random.Random(3)
    trained_on = [rng.lognormvariate(11, 0.4) for _ in range(2000)]
    t1 = datetime.now(UTC) - timedelta(hours=2)
    await _push(features, f"income_{s}", trained_on, t1)

    labels = pa.table(
        {
            "loan_id": [f"L{i}" for i in range(2000)],
            # Pushed values are known from when they arrived (now), not from their event time.
            "event_time": pa.array([datetime.now(UTC)] * 2000, pa.timestamp("us", tz="UTC")),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, labels.schema) as writer:
        writer.write_table(labels)
    snapshot = None
    async for part in features.GetHistoricalFeatures(
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"income_{s}:*"]),
            entity_rows_arrow=sink.getvalue().to_pybytes(),
        )
    ):
        if part.HasField("snapshot"):
            snapshot = part.snapshot
    assert snapshot is not None

    stable = await features.GetFeatureStatistics(
        rr.GetFeatureStatisticsRequest(feature_view=f"income_{s}", snapshot_id=snapshot.snapshot_id)
    )
    shifted = [v * 1.8 for v in trained_on[:1000]] + [-5.0]  # and one value breaking its range
    await _push(features, f"income_{s}", shifted, t1 + timedelta(hours=1))
    drifted = await features.GetFeatureStatistics(
        rr.GetFeatureStatisticsRequest(feature_view=f"income_{s}", snapshot_id=snapshot.snapshot_id)
    )

    income = {f.feature: f for f in stable.features}["income"]
    assert income.count == 2000 and income.nulls == 0
    assert income.mean == pytest.approx(sum(trained_on) / 2000)
    assert income.HasField("psi") and income.psi < 0.01, "the live values are the training values"
    moved = {f.feature: f for f in drifted.features}
    assert moved["income"].HasField("psi"), drifted
    assert moved["income"].psi > 0.25 and moved["dti"].psi > 0.25
    assert drifted.violations == 1

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await features.GetFeatureStatistics(
            rr.GetFeatureStatisticsRequest(
                feature_view=f"income_{s}", snapshot_id="sha256:" + "0" * 64
            )
        )
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
