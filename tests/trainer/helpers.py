"""A small credit data set in Postgres, its features in the feature store, and job specs."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
from google.protobuf import json_format

from lathe.feature_store.v1 import request_response_pb2 as fs_rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.sdk.features import (
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    String,
    repository_of,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 60
SPLIT_DAY = 45


@dataclass(frozen=True)
class Dataset:
    suffix: str
    table: str
    labels: str
    feature_service: str
    model_name: str
    rows: int

    def label_query(self) -> str:
        return (
            f"SELECT loan_id, scored_at AS label_time, defaulted AS label FROM {self.labels} "
            "ORDER BY loan_id"
        )


async def make_dataset(
    features: FeatureStoreStub,
    registry: ModelRegistryStub,
    db_pool: asyncpg.Pool,
    *,
    rows: int = 1200,
    seed: int = 0,
) -> Dataset:
    """Loans with two numbers and a grade whose default odds depend on all three."""
    s = uuid.uuid4().hex[:8]
    table, labels = f"public.tr_loans_{s}", f"public.tr_labels_{s}"
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10.5, 0.5, rows)
    rate = rng.uniform(5, 25, rows)
    grade = rng.choice(["A", "B", "C", "D"], rows, p=[0.3, 0.3, 0.25, 0.15])
    logit = -1.0 + 0.3 * (rate - 15) - 2.0 * (np.log(income) - 10.5) + (grade == "D") * 1.5
    default = rng.random(rows) < 1 / (1 + np.exp(-logit))
    missing = rng.random(rows) < 0.05
    await db_pool.execute(
        f"""CREATE TABLE {table} (loan_id text, issued_at timestamptz, ingested_at timestamptz,
                income double precision, rate double precision, grade text);
            CREATE TABLE {labels} (loan_id text, scored_at timestamptz, defaulted boolean)"""
    )
    loans, outcomes = [], []
    for i in range(rows):
        issued = T0 + timedelta(days=DAYS * i / rows)
        loan_id = f"L{i:05d}"
        loans.append(
            (
                loan_id,
                issued,
                issued + timedelta(minutes=1),
                None if missing[i] else float(income[i]),
                float(rate[i]),
                str(grade[i]),
            )
        )
        outcomes.append((loan_id, issued + timedelta(hours=1), bool(default[i])))
    schema, name = table.split(".")
    await db_pool.copy_records_to_table(name, records=loans, schema_name=schema)
    await db_pool.copy_records_to_table(labels.split(".")[1], records=outcomes, schema_name=schema)
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"apps_{s}",
        entity=loan,
        source=BatchSource(table, event_time_column="issued_at", created_time_column="ingested_at"),
        features=[Field("income", Float64), Field("rate", Float64), Field("grade", String)],
        ttl=None,
    )
    service = FeatureService(f"credit_{s}", [f"apps_{s}:*"])
    await features.ApplyDefinitions(
        fs_rr.ApplyDefinitionsRequest(repository=repository_of([loan, view, service]))
    )
    async for _ in features.Materialize(fs_rr.MaterializeRequest(feature_view=f"apps_{s}")):
        pass
    model_name = f"credit-{s}"
    await registry.CreateModel(reg_rr.CreateModelRequest(name=model_name, owner="risk-ml"))
    return Dataset(s, table, labels, f"credit_{s}", model_name, rows)


def spec(dataset: Dataset, **overrides: Any) -> message_pb2.TrainingJobSpec:
    """A tiny, fast job on ``dataset``; ``overrides`` are spec fields as JSON-style dicts."""
    body: dict[str, Any] = {
        "modelName": dataset.model_name,
        "featureService": dataset.feature_service,
        "labelSource": {"query": dataset.label_query()},
        "split": {"validationStart": (T0 + timedelta(days=SPLIT_DAY)).isoformat()},
        "model": {
            "family": "mlp",
            "hyperparameters": {"d_hidden": 16, "n_layers": 1, "dropout": 0.0, "d_embedding": 4},
        },
        "optimization": {"epochs": 2, "batchSize": 64, "learningRate": 0.01},
        "seed": 7,
        "resources": {"processes": 1, "threadsPerProcess": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return json_format.ParseDict(body, message_pb2.TrainingJobSpec())


async def submit(trainer: TrainerStub, job_spec: message_pb2.TrainingJobSpec) -> str:
    response = await trainer.SubmitTrainingJob(rr.SubmitTrainingJobRequest(spec=job_spec))
    return response.job.job_id


async def wait_for(
    trainer: TrainerStub, job_id: str, states: set[int], timeout_s: float = 120.0
) -> message_pb2.TrainingJob:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        job = (await trainer.GetTrainingJob(rr.GetTrainingJobRequest(job_id=job_id))).job
        if job.state in states:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"job {job_id} is {message_pb2.JobState.Name(job.state)}: {job}")
        await asyncio.sleep(0.2)


async def events(trainer: TrainerStub, job_id: str) -> list[rr.WatchTrainingJobResponse]:
    """Every event of a job, until it ends (WatchTrainingJob from the start)."""
    return [e async for e in trainer.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job_id))]


DONE = {
    message_pb2.JOB_STATE_SUCCEEDED,
    message_pb2.JOB_STATE_FAILED,
    message_pb2.JOB_STATE_CANCELLED,
}
