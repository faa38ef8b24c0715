"""A sequence model from LAST_N features to Predict, against the real services.

Payment events stream through JetStream into a stream view with a multi-column
``LAST_N(5)`` (amount, days late) beside scalar aggregations; a batch view adds scalar
features; one feature service serves both. A ``sequence_transformer`` job names the
sequence by its columns only (the events' times join it as ages, ADR 0026), trains,
registers; the inference service deploys the version and scores entities without events,
with events only outside the sequence's window (empty lists) and with more than n events.
Online scores must equal the registered model's offline scores on the feature store's
point-in-time rows at the time Predict read the features (|diff| < 1e-5).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import numpy as np
import onnxruntime
import pyarrow as pa
from nats.js import JetStreamContext

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fs_rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1 import message_pb2 as im
from lathe.inference.v1 import request_response_pb2 as irr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings, ServiceName
from libs.preprocessing import PreprocessingSpec, transform
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    StreamSource,
    repository_of,
)
from libs.sdk.model_registry import RegistryClient
from services.feature_store.app.streaming.ingest import ingest_streams
from services.inference.config import InferenceSettings
from services.inference.service import build_spec
from tests.feature_store.hardening_helpers import arrow_ipc, training_set
from tests.feature_store.helpers import suffix
from tests.feature_store.test_streaming import _publish, _wait_for_events
from tests.support.hosting import hosted
from tests.trainer.helpers import DONE, spec, submit, wait_for

LOANS = 240
N = 5
DAY = 86400.0


def _history(i: int, rng: np.random.Generator) -> list[tuple[float, float, int]]:
    """Loan i's payments as (age in days, amount, days late): none for every sixth loan,
    only older than the 30-day window for the next, else 1-12 inside it (ages kept clear
    of the 30- and 60-day window edges, so reads seconds apart see the same events)."""
    if i % 6 == 0:
        return []
    ages = rng.uniform(34, 45, 3) if i % 6 == 1 else rng.uniform(0.2, 27, 1 + i % 12)
    late = np.where(rng.random(len(ages)) < 0.35, rng.integers(1, 30, len(ages)), 0)
    return [
        (float(a), float(np.round(rng.uniform(100, 900), 2)), int(d))
        for a, d in zip(ages, late, strict=True)
    ]


async def test_last_n_features_train_register_and_serve_equal_offline(
    trainer: TrainerStub,
    features: FeatureStoreStub,
    registry: ModelRegistryStub,
    db_pool: asyncpg.Pool,
    js: JetStreamContext,
    test_settings: LatheSettings,
) -> None:
    s = suffix()
    rng = np.random.default_rng(3)
    now = datetime.now(UTC)
    histories = [_history(i, rng) for i in range(LOANS)]
    loans = [f"L{i:04d}" for i in range(LOANS)]

    # A batch view of scalar facts, and the payments stream with LAST_N(5) over 2 columns.
    table = f"public.seq_loans_{s}"
    await db_pool.execute(
        f"CREATE TABLE {table} (loan_id text, issued_at timestamptz, rate double precision)"
    )
    rates = rng.uniform(5, 25, LOANS)
    await db_pool.copy_records_to_table(
        table.split(".")[1],
        records=[
            (loan, now - timedelta(days=100), float(r))
            for loan, r in zip(loans, rates, strict=True)
        ],
        schema_name="public",
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    apps = FeatureView(
        f"apps_{s}",
        entity=loan,
        source=BatchSource(table, event_time_column="issued_at"),
        features=[Field("rate", Float64)],
        ttl=None,
    )
    payments = FeatureView(
        f"pay_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="paid_at"),
        tile_size=timedelta(days=1),
        allowed_lateness=timedelta(days=60),
        aggregations=[
            Aggregation(
                "",
                "last_n",
                timedelta(days=30),
                "recent",
                n=N,
                columns={"amount": Float64, "days_late": Int64},
            ),
            Aggregation("amount", "count", timedelta(days=60), "payments_60d"),
            Aggregation("days_late", "mean", timedelta(days=30), "days_late_mean_30d"),
        ],
    )
    service = FeatureService(f"seq_{s}", [f"apps_{s}:*", f"pay_{s}:*"])
    await features.ApplyDefinitions(
        fs_rr.ApplyDefinitionsRequest(repository=repository_of([loan, apps, payments, service]))
    )
    async for _ in features.Materialize(fs_rr.MaterializeRequest(feature_view=f"apps_{s}")):
        pass
    subject = ingest_streams(test_settings.namespace).subject(f"src_{s}")
    published = 0
    for loan_id, history in zip(loans, histories, strict=True):
        for age, amount, late in history:
            paid_at = now - timedelta(days=age)
            body = {"loan_id": loan_id, "paid_at": paid_at.isoformat(), "amount": amount}
            await _publish(js, subject, {**body, "days_late": late})
            published += 1
    await _wait_for_events(db_pool, f"pay_{s}", published)

    # Labels, known after every event: bad when the newest payment in 30 days was late.
    await asyncio.sleep(0.05)
    labelled_from = datetime.now(UTC)
    labels = f"public.seq_labels_{s}"
    await db_pool.execute(
        f"CREATE TABLE {labels} (loan_id text, scored_at timestamptz, defaulted boolean)"
    )
    outcomes = []
    for i, (loan_id, history) in enumerate(zip(loans, histories, strict=True)):
        inside = sorted((h for h in history if h[0] < 30), key=lambda h: -h[0])
        bad = bool(inside and inside[-1][2] > 0) != bool(rng.random() < 0.05)
        outcomes.append((loan_id, labelled_from + timedelta(milliseconds=i), bad))
    await db_pool.copy_records_to_table(
        labels.split(".")[1], records=outcomes, schema_name="public"
    )
    model_name = f"seq-{s}"
    await registry.CreateModel(reg_rr.CreateModelRequest(name=model_name, owner="risk-ml"))

    # The natural spec: the sequence's columns; its event times join it as ages.
    job_spec = spec_for(model_name, f"seq_{s}", labels, labelled_from, s)
    job = await wait_for(trainer, await submit(trainer, job_spec), DONE, timeout_s=300)
    assert job.state == message_pb2.JOB_STATE_SUCCEEDED, job.failure_reason
    assert job.model_version >= 1
    assert job.metrics["auc"] > 0.6, dict(job.metrics)

    client = RegistryClient(registry, actor="test")
    onnx_bytes = (await client.download(model_name, job.model_version, "model.onnx")).content
    pre = PreprocessingSpec.from_json(
        (await client.download(model_name, job.model_version, "preprocessing.json")).content
    )
    (sequence,) = pre.sequences
    assert pre.version == 3 and sequence.event_time == f"pay_{s}:recent__event_time"
    assert sequence.feature_names == (
        f"pay_{s}:recent__amount",
        f"pay_{s}:recent__days_late",
        f"pay_{s}:recent__event_time",
    )
    age = next(f for f in sequence.numeric if f.name == sequence.event_time)
    assert 0.2 * DAY < age.fill < 27 * DAY  # fitted on ages (seconds), not epoch seconds

    # Inference deploys the version and scores a mix of histories.
    await registry.SetAlias(
        reg_rr.SetAliasRequest(model_name=model_name, alias="production", version=job.model_version)
    )
    chosen = list(range(0, 48))  # none, old only, 1..12 events (more than N included)
    settings = InferenceSettings(
        models=model_name, log_sample_rate=1.0, gpu_probe=False, poll_interval_s=0.05
    )
    async with hosted(build_spec(settings), test_settings):
        address = test_settings.service_addr(ServiceName.INFERENCE)
        async with grpc.aio.insecure_channel(address) as channel:
            inference = InferenceStub(channel)
            await _serving(inference, model_name, job.model_version)
            reply = await inference.Predict(
                irr.PredictRequest(
                    model_name=model_name,
                    rows=[
                        im.PredictionInput(entity_keys={"loan_id": fs.Value(string_value=loans[i])})
                        for i in chosen
                    ],
                ),
                timeout=20,
            )
    assert {p.model_version for p in reply.predictions} == {job.model_version}
    online = np.array([p.scores[0] for p in reply.predictions])
    read_at = reply.features_read_at.ToDatetime(tzinfo=UTC)
    assert labelled_from < read_at <= datetime.now(UTC)

    # Offline: the feature store's point-in-time rows at that time, the registered model.
    rows = pa.table(
        {
            "loan_id": [loans[i] for i in chosen],
            "event_time": pa.array([read_at] * len(chosen), pa.timestamp("us", tz="UTC")),
        }
    )
    _, offline_rows = await training_set(
        features,
        fs_rr.GetHistoricalFeaturesRequest(
            feature_service=f"seq_{s}", entity_rows_arrow=arrow_ipc(rows)
        ),
    )
    amounts = offline_rows.column(f"pay_{s}:recent__amount").to_pylist()
    assert amounts[0] is None  # no events: null
    assert amounts[1] == []  # events, none in the window: empty
    assert max(len(a or []) for a in amounts) == N  # more than N events: the newest N
    encoded = transform(
        pre,
        {name: offline_rows.column(name) for name in pre.feature_names},
        reference_times=rows.column("event_time"),
    )
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feeds = {i.name: encoded.arrays()[i.name] for i in session.get_inputs()}
    (offline,) = session.run(None, feeds)
    offline = np.asarray(offline, dtype=np.float64).reshape(-1)
    assert np.max(np.abs(online - offline)) < 1e-5, np.max(np.abs(online - offline))
    later = transform(
        pre,
        {name: offline_rows.column(name) for name in pre.feature_names},
        reference_times=np.full(len(chosen), read_at.timestamp() + 20 * DAY),
    )
    (aged,) = session.run(None, {name: later.arrays()[name] for name in feeds})
    assert np.max(np.abs(np.asarray(aged).reshape(-1) - offline)) > 1e-3  # ages are read
    assert np.std(online) > 1e-3  # the entities are told apart


def spec_for(
    model_name: str, service: str, labels: str, labelled_from: datetime, s: str
) -> message_pb2.TrainingJobSpec:
    from tests.trainer.helpers import Dataset

    dataset = Dataset(s, "", labels, service, model_name, LOANS)
    return spec(
        dataset,
        split={
            "validationStart": (labelled_from + timedelta(milliseconds=LOANS * 0.7)).isoformat()
        },
        model={
            "family": "sequence_transformer",
            "hyperparameters": {"d_token": 16, "n_heads": 2, "n_blocks": 1},
            "sequences": [
                {
                    "name": "payments",
                    "features": [f"pay_{s}:recent__amount", f"pay_{s}:recent__days_late"],
                    "maxLength": N,
                }
            ],
        },
        optimization={"epochs": 12, "batchSize": 32, "learningRate": 0.005},
    )


async def _serving(inference: InferenceStub, model: str, version: int) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        try:
            answer = await inference.GetDeployment(
                irr.GetDeploymentRequest(model_name=model, alias="production")
            )
            if answer.deployment.serving_version == version:
                return
            failure = json.dumps(str(answer.deployment))
        except grpc.aio.AioRpcError as error:
            failure = error.details() or ""
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"v{version} of {model} is not serving: {failure}")
        await asyncio.sleep(0.1)
