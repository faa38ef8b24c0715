"""The Python SDK over a real feature store: training sets as DataFrames, online rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.feature_store import FeatureStoreClient
from libs.sdk.features import Entity, FeatureView, Field, Float64, PushSource, repository_of
from tests.feature_store.helpers import column, suffix


async def test_training_set_dataframe_and_online_rows(features: FeatureStoreStub) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    rates = FeatureView(
        f"rates_{s}",
        entity=loan,
        source=PushSource(),
        ttl=timedelta(days=1),
        features=[Field("interest_rate", Float64)],
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, rates]))
    )
    now = datetime.now(UTC).replace(microsecond=0)
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"rates_{s}",
            columns={
                "loan_id": column(["L1", "L1"]),
                "event_time": column([now - timedelta(hours=3), now - timedelta(hours=1)]),
                "interest_rate": column([7.5, 9.25]),
            },
        )
    )
    store = FeatureStoreClient(features)
    later = now + timedelta(minutes=5)
    labels = pd.DataFrame(
        {
            "loan_id": ["L1", "L2", "L1"],
            "event_time": pd.to_datetime([later, later, now - timedelta(hours=2)], utc=True),
            "defaulted": [False, True, False],
        }
    )

    training = await store.get_historical_features(labels, features=[f"rates_{s}:*"])

    frame = training.dataframe
    assert list(frame.columns) == ["loan_id", "event_time", "defaulted", f"rates_{s}:interest_rate"]
    assert frame["loan_id"].tolist() == ["L1", "L2", "L1"]
    assert frame["defaulted"].tolist() == [False, True, False]
    # L2 has no value; the third row's time precedes the push: not yet known then.
    assert frame[f"rates_{s}:interest_rate"].tolist()[0] == 9.25
    assert frame[f"rates_{s}:interest_rate"].isna().tolist() == [False, True, True]
    assert training.snapshot_id.startswith("sha256:")
    assert training.feature_names == (f"rates_{s}:interest_rate",)

    l1, l3 = await store.get_online_features({"loan_id": ["L1", "L3"]}, features=[f"rates_{s}:*"])
    assert l1[f"rates_{s}:interest_rate"].value == 9.25
    assert l1[f"rates_{s}:interest_rate"].status == "present"
    assert l1[f"rates_{s}:interest_rate"].event_time == now - timedelta(hours=1)
    assert l3[f"rates_{s}:interest_rate"].status == "not_found"

    with pytest.raises(ValueError, match="not both"):
        await store.get_online_features({"loan_id": ["L1"]}, "svc", features=["x:*"])
