"""Point-in-time training sets on hand-built cases with exact expected rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pyarrow as pa
import pytest

from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.features import (
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    PushSource,
    String,
    Timestamp,
    on_demand_feature_view,
    repository_of,
)
from tests.feature_store.helpers import column, python, suffix

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


# (loan_id, event_time, created_time, rate, term)
SOURCE = [
    ("L1", day(1), day(1), 5.0, 36),
    ("L1", day(5), day(5), 6.0, 36),
    ("L1", day(3), day(10), 9.0, 36),  # a late correction: true from day 3, known on day 10
    ("L1", day(7), day(7), 7.0, 60),
    ("L1", day(7), day(8), 7.5, 60),  # same event time, known a day later: wins once known
    ("L2", day(-400), day(-400), 4.0, 36),  # older than the 365-day TTL at every label
]
# (loan_id, label time) -> expected rate
EXPECTED = [
    ("L1", day(0), None),  # nothing true yet
    ("L1", day(2), 5.0),
    ("L1", day(4), 5.0),  # the day-3 correction is not known until day 10: no leak
    ("L1", day(5), 6.0),  # event time equal to the label time counts
    ("L1", day(7), 7.0),  # the day-8 version of day 7 is not known yet
    ("L1", day(9), 7.5),
    ("L1", day(11), 7.5),  # the correction is known now, but day 7 is later than day 3
    ("L2", day(0), None),  # expired
    ("L3", day(5), None),  # unknown entity
]


async def _setup(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> str:
    s = suffix()
    await db_pool.execute(
        f"""CREATE TABLE public.hist_{s} (loan_id text, issued_at timestamptz,
                ingested_at timestamptz, rate double precision, term bigint)"""
    )
    await db_pool.executemany(f"INSERT INTO public.hist_{s} VALUES ($1, $2, $3, $4, $5)", SOURCE)
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"terms_{s}",
        entity=loan,
        source=BatchSource(
            f"public.hist_{s}", event_time_column="issued_at", created_time_column="ingested_at"
        ),
        features=[Field("rate", Float64), Field("term", Int64)],
        ttl=timedelta(days=365),
    )

    @on_demand_feature_view(
        inputs=[f"terms_{s}:rate"],
        request_fields=[Field("amount", Float64)],
        features=[Field("interest", Float64)],
        name=f"interest_{s}",
    )
    def interest(row: dict) -> dict:
        rate = next(v for k, v in row.items() if k.endswith(":rate"))
        return {"interest": None if rate is None else row["amount"] * rate / 100}

    service = FeatureService(f"train_{s}", [f"terms_{s}:rate", f"interest_{s}:*"])
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view, interest, service]))
    )
    async for _ in features.Materialize(rr.MaterializeRequest(feature_view=f"terms_{s}")):
        pass
    return s


def _arrow(rows: list[tuple[str, datetime, float]]) -> bytes:
    table = pa.table(
        {
            "loan_id": [r[0] for r in rows],
            "event_time": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
            "amount": [r[2] for r in rows],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


async def _training_set(
    features: FeatureStoreStub, request: rr.GetHistoricalFeaturesRequest
) -> tuple[rr.DatasetSnapshot, pa.Table]:
    snapshot, parts = None, []
    async for response in features.GetHistoricalFeatures(request):
        if response.HasField("snapshot"):
            snapshot = response.snapshot
        else:
            parts.append(response.arrow_ipc)
    assert snapshot is not None
    return snapshot, pa.ipc.open_stream(b"".join(parts)).read_all()


async def test_point_in_time_join_is_bitemporal_with_ttl(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = await _setup(features, db_pool)
    labels = [(key, at, 1000.0) for key, at, _ in EXPECTED]

    snapshot, table = await _training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_service=f"train_{s}", entity_rows_arrow=_arrow(labels)
        ),
    )

    assert snapshot.rows == len(EXPECTED)
    assert list(snapshot.feature_names) == [f"terms_{s}:rate", f"interest_{s}:interest"]
    assert table.column("loan_id").to_pylist() == [k for k, _, _ in EXPECTED], "label order kept"
    assert table.column("event_time").to_pylist() == [t for _, t, _ in EXPECTED]
    assert table.column(f"terms_{s}:rate").to_pylist() == [rate for _, _, rate in EXPECTED]
    assert table.column(f"interest_{s}:interest").to_pylist() == [
        None if rate is None else pytest.approx(10 * rate) for _, _, rate in EXPECTED
    ]

    again, _ = await _training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_service=f"train_{s}", entity_rows_arrow=_arrow(labels)
        ),
    )
    assert again.snapshot_id == snapshot.snapshot_id and snapshot.snapshot_id.startswith("sha256:")
    recorded = await db_pool.fetchval(
        "SELECT count(*) FROM feature_store.events WHERE event_type = $1 AND stream_id = $2",
        "lathe.feature_store.v1.DatasetSnapshotCreated",
        f"dataset-{snapshot.snapshot_id.split(':')[1][:32]}",
    )
    assert recorded == 2


async def test_labels_from_a_postgres_table(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = await _setup(features, db_pool)
    await db_pool.execute(
        f"CREATE TABLE public.labels_{s} (loan text, at timestamptz, defaulted boolean)"
    )
    await db_pool.executemany(
        f"INSERT INTO public.labels_{s} VALUES ($1, $2, $3)",
        [("L1", day(2), False), ("L1", day(9), True), ("L2", day(0), False)],
    )
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"terms_{s}:*"]),
        label_source=rr.LabelSource(
            table=f"public.labels_{s}",
            entity_column="loan",
            event_time_column="at",
            columns=["defaulted"],
        ),
    )

    _, table = await _training_set(features, request)

    rows = sorted(
        zip(
            *(table.column(c).to_pylist() for c in ("loan_id", "defaulted", f"terms_{s}:rate")),
            strict=True,
        )
    )
    assert rows == [("L1", False, 5.0), ("L1", True, 7.5), ("L2", False, None)]


async def test_bad_training_set_requests(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> None:
    s = await _setup(features, db_pool)
    no_time = pa.table({"loan_id": ["L1"]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, no_time.schema) as writer:
        writer.write_table(no_time)
    cases = [
        (rr.GetHistoricalFeaturesRequest(feature_service=f"train_{s}"), "entity_rows_arrow"),
        (
            rr.GetHistoricalFeaturesRequest(
                feature_service=f"train_{s}", entity_rows_arrow=b"junk"
            ),
            "not an Arrow",
        ),
        (
            rr.GetHistoricalFeaturesRequest(
                feature_service=f"train_{s}", entity_rows_arrow=sink.getvalue().to_pybytes()
            ),
            "event_time",
        ),
        (
            rr.GetHistoricalFeaturesRequest(
                feature_service=f"train_{s}",
                label_source=rr.LabelSource(
                    table="public.x; DROP TABLE y", entity_column="a", event_time_column="b"
                ),
            ),
            "not a valid name",
        ),
    ]
    for request, fragment in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _training_set(features, request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in raised.value.details()


async def test_on_demand_and_stored_values_agree_online_and_offline(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = await _setup(features, db_pool)
    now = datetime.now(UTC)
    _, offline = await _training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_service=f"train_{s}", entity_rows_arrow=_arrow([("L1", now, 2500.0)])
        ),
    )
    online = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_service=f"train_{s}",
            entities={"loan_id": column(["L1"])},
            request_data={"amount": column([2500.0])},
        )
    )

    online_values = [python(v) for v in online.results[0].values]
    offline_values = [offline.column(name).to_pylist()[0] for name in online.feature_names]
    assert online_values == offline_values == [7.5, pytest.approx(187.5)]


async def test_request_fields_reach_on_demand_code_typed_the_same_online_and_offline(
    features: FeatureStoreStub,
) -> None:
    """Request data online and label columns offline are both converted to the fields'
    declared types before the function sees them: an integer for a Float64 field is a
    float, a naive time for a Timestamp field is UTC; a string for a Float64 field is
    refused by name on both paths."""
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(f"p_{s}", entity=loan, source=PushSource(), features=[Field("v", Float64)])

    @on_demand_feature_view(
        inputs=[f"p_{s}:v"],
        request_fields=[Field("amount", Float64), Field("asked_at", Timestamp)],
        features=[Field("kind", String), Field("when", Timestamp)],
        name=f"kinds_{s}",
    )
    def kinds(row: dict) -> dict:
        amount = row["amount"]
        kind = "float" if isinstance(amount, float) else "other"
        return {"kind": kind, "when": row["asked_at"]}

    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view, kinds]))
    )
    asked = datetime(2026, 5, 1, 12, 30)  # naive: UTC
    online = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"kinds_{s}:*"]),
            entities={"loan_id": column(["L1"])},
            request_data={"amount": column([2500]), "asked_at": column([asked])},
        )
    )
    labels = pa.table(
        {
            "loan_id": ["L1"],
            "event_time": pa.array([datetime.now(UTC)], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([2500], pa.int64()),
            "asked_at": pa.array([asked], pa.timestamp("us")),
        }
    )
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"kinds_{s}:*"]),
        entity_rows_arrow=_ipc(labels),
    )
    _, offline = await _training_set(features, request)
    online_values = [python(v) for v in online.results[0].values]
    offline_values = [offline.column(name).to_pylist()[0] for name in online.feature_names]
    assert online_values == offline_values == ["float", asked.replace(tzinfo=UTC)]

    wrong = labels.set_column(2, "amount", pa.array(["2500"]))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _training_set(
            features,
            rr.GetHistoricalFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"kinds_{s}:*"]),
                entity_rows_arrow=_ipc(wrong),
            ),
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'amount'" in raised.value.details() and "FLOAT64" in raised.value.details()


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
