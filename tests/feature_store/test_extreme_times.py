"""The first and last valid instants are ordinary event times and values, everywhere.

asyncpg stores 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z as Postgres
``-infinity``/``infinity`` and decodes those as naive datetimes; every path out of
Postgres (online reads, the replica, the offline mirror's CSV, DuckDB, Arrow) must give
them back as the aware instants they were (domain/times.py, store/times.py). On a
database of its own: a row that breaks loading would break every later test's replica.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.config import LatheSettings
from libs.sdk.features import (
    Entity,
    FeatureView,
    Field,
    Float64,
    PushSource,
    Timestamp,
    repository_of,
)
from tests.feature_store.hardening_helpers import arrow_ipc, private_feature_store, training_set
from tests.feature_store.helpers import column, python
from tests.support.infra import InfraEndpoints

FIRST = datetime(1, 1, 1, tzinfo=UTC)
LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


async def test_the_ends_of_time_round_trip_online_and_offline(
    infra: InfraEndpoints, test_settings: LatheSettings, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    async with private_feature_store(infra, test_settings, tmp_path) as features:
        loan = Entity("loan", join_key="loan_id")
        view = FeatureView(
            "dates",
            entity=loan,
            source=PushSource(),
            features=[Field("v", Float64), Field("z", Timestamp)],
        )
        await features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
        )
        await features.PushFeatures(
            rr.PushFeaturesRequest(
                feature_view="dates",
                columns={
                    "loan_id": column(["L1", "L2"]),
                    "event_time": column([FIRST, now - timedelta(hours=1)]),
                    "v": column([1.0, 2.0]),
                    "z": column([LAST, FIRST]),
                },
            )
        )
        online = await features.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_list=rr.FeatureList(features=["dates:*"]),
                entities={"loan_id": column(["L1", "L2"])},
            )
        )
        later = datetime.now(UTC)  # after the push: its rows are known then
        labels = pa.table(
            {
                "loan_id": ["L1", "L2", "L1"],
                "event_time": pa.array([later, later, LAST], pa.timestamp("us", tz="UTC")),
            }
        )
        _, table = await training_set(
            features,
            rr.GetHistoricalFeaturesRequest(
                feature_list=rr.FeatureList(features=["dates:*"]),
                entity_rows_arrow=arrow_ipc(labels),
            ),
        )
    first, second = online.results
    assert [python(v) for v in first.values] == [1.0, LAST]
    assert list(first.statuses) == [m.FEATURE_STATUS_PRESENT] * 2
    assert first.event_times[0].ToDatetime(tzinfo=UTC) == FIRST
    assert [python(v) for v in second.values] == [2.0, FIRST]
    assert table.column("dates:v").to_pylist() == [1.0, 2.0, 1.0]
    assert table.column("dates:z").to_pylist() == [LAST, FIRST, LAST]
