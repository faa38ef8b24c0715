"""A small credit data set in the feature store, and trainer-shaped model versions of it.

Models are exported here the way the trainer exports them (its model families and its
ONNX export with parity, imported in tests only: a service never imports another) with
``libs.preprocessing`` fitted on the training rows, and registered through the real
registry with ``model.onnx``, ``weights.safetensors`` and ``preprocessing.json``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import onnx
import torch
from onnx import helper
from safetensors.torch import save as save_safetensors

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fs_rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1 import message_pb2 as im
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.preprocessing import PreprocessingSpec, fit
from libs.sdk.features import (
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    String,
    on_demand_feature_view,
    repository_of,
)
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Credit:
    """A feature service over loans, and the training columns its models are fitted on."""

    suffix: str
    feature_service: str
    features: tuple[str, ...]
    categorical: tuple[str, ...]
    train: dict[str, list[object]]
    loan_ids: tuple[str, ...]

    def spec(self) -> PreprocessingSpec:
        return fit(self.train, list(self.features), categorical=list(self.categorical))


@on_demand_feature_view(
    inputs=["placeholder:rate"],
    request_fields=[Field("requested_amount", Float64)],
    features=[Field("monthly_interest", Float64)],
)
def monthly_interest(row):  # type: ignore[no-untyped-def]
    rate = next((v for k, v in row.items() if k.endswith(":rate")), None)
    return {"monthly_interest": None if rate is None else row["requested_amount"] * rate / 1200}


async def make_credit(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, *, rows: int = 400, seed: int = 0
) -> Credit:
    s = uuid.uuid4().hex[:8]
    table = f"public.inf_loans_{s}"
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10.5, 0.5, rows)
    rate = rng.uniform(5, 25, rows)
    grade = rng.choice(["A", "B", "C", "D"], rows, p=[0.3, 0.3, 0.25, 0.15])
    await db_pool.execute(
        f"""CREATE TABLE {table} (loan_id text, issued_at timestamptz, ingested_at timestamptz,
                income double precision, rate double precision, grade text)"""
    )
    records = []
    for i in range(rows):
        issued = T0 + timedelta(hours=i)
        records.append(
            (f"L{i:05d}", issued, issued, float(income[i]), float(rate[i]), str(grade[i]))
        )
    await db_pool.copy_records_to_table(table.split(".")[1], records=records, schema_name="public")
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"apps_{s}",
        entity=loan,
        source=BatchSource(table, event_time_column="issued_at", created_time_column="ingested_at"),
        features=[Field("income", Float64), Field("rate", Float64), Field("grade", String)],
        ttl=None,
    )
    on_demand = monthly_interest.__class__(
        f"pay_{s}",
        monthly_interest.function,
        [f"apps_{s}:rate"],
        monthly_interest.request_fields,
        monthly_interest.features,
    )
    service = FeatureService(f"credit_{s}", [f"apps_{s}:*", f"pay_{s}:*"])
    await features.ApplyDefinitions(
        fs_rr.ApplyDefinitionsRequest(repository=repository_of([loan, view, on_demand, service]))
    )
    async for _ in features.Materialize(fs_rr.MaterializeRequest(feature_view=f"apps_{s}")):
        pass
    names = (f"apps_{s}:income", f"apps_{s}:rate", f"pay_{s}:monthly_interest", f"apps_{s}:grade")
    amount = rng.uniform(1000, 30000, rows)
    train: dict[str, list[object]] = {
        names[0]: income.tolist(),
        names[1]: rate.tolist(),
        names[2]: (amount * rate / 1200).tolist(),
        names[3]: grade.tolist(),
    }
    return Credit(
        s, f"credit_{s}", names, (names[3],), train, tuple(f"L{i:05d}" for i in range(rows))
    )


def export(credit: Credit, *, family: str = "mlp", seed: int = 1) -> tuple[bytes, bytes, bytes]:
    """(model.onnx, weights.safetensors, preprocessing.json) of an untrained model."""
    from libs.preprocessing import transform
    from services.trainer.training.export import export_onnx
    from services.trainer.training.models import ModelInputs, build_ft_transformer, build_mlp

    spec = credit.spec()
    inputs = ModelInputs(len(spec.numeric), tuple(c.cardinality for c in spec.categorical))
    torch.manual_seed(seed)
    if family == "mlp":
        model = build_mlp(inputs, d_hidden=16, n_layers=2, dropout=0.0, d_embedding=4)
    else:
        model = build_ft_transformer(
            inputs,
            d_token=16,
            n_blocks=1,
            n_heads=2,
            ffn_factor=1.0,
            attention_dropout=0.0,
            ffn_dropout=0.0,
            residual_dropout=0.0,
        )
    encoded = transform(spec, credit.train)
    exported = export_onnx(
        model,
        torch.from_numpy(encoded.numeric[:64]),
        torch.from_numpy(encoded.categorical[:64]),
        opset=17,
    )
    weights = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
    return exported.onnx_bytes, weights, spec.to_json()


def with_noise(onnx_bytes: bytes, scale: float = 1e-3) -> bytes:
    """The graph with random noise added to its output: two runs never agree (parity fails)."""
    graph = onnx.load_from_string(onnx_bytes)
    out = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [f"{o}_clean" if o == out else o for o in node.output]
    graph.graph.node.extend(
        [
            helper.make_node("RandomUniformLike", [f"{out}_clean"], ["noise"], high=scale, low=0.0),
            helper.make_node("Add", [f"{out}_clean", "noise"], [out]),
        ]
    )
    return graph.SerializeToString()


async def register(
    registry: ModelRegistryStub,
    credit: Credit,
    model_name: str,
    files: tuple[bytes, bytes, bytes],
) -> int:
    onnx_bytes, weights, preprocessing = files
    client = RegistryClient(registry, actor="test")
    version = await client.register_version(
        VersionSpec(
            model_name=model_name,
            signature=reg.Signature(
                inputs=[
                    reg.TensorSpec(name=n, dtype=reg.DATA_TYPE_FLOAT64) for n in credit.features
                ],
                outputs=[
                    reg.TensorSpec(name="probability", dtype=reg.DATA_TYPE_FLOAT32, shape=[-1])
                ],
            ),
            lineage=reg.Lineage(
                feature_service=credit.feature_service, feature_service_version="1"
            ),
        ),
        {
            "model.onnx": ArtifactUpload(reg.ARTIFACT_FORMAT_ONNX, content=onnx_bytes),
            "weights.safetensors": ArtifactUpload(reg.ARTIFACT_FORMAT_SAFETENSORS, content=weights),
            "preprocessing.json": ArtifactUpload(reg.ARTIFACT_FORMAT_JSON, content=preprocessing),
        },
    )
    return int(version.version)


async def create_model(registry: ModelRegistryStub, name: str) -> None:
    await registry.CreateModel(reg_rr.CreateModelRequest(name=name, owner="risk-ml"))


async def set_alias(
    registry: ModelRegistryStub, model: str, alias: str, version: int, share: float = 0.0
) -> None:
    current = 0
    try:
        resolved = await registry.ResolveAlias(
            reg_rr.ResolveAliasRequest(model_name=model, alias=alias)
        )
        current = resolved.alias.version
    except Exception:
        current = 0
    await registry.SetAlias(
        reg_rr.SetAliasRequest(
            model_name=model,
            alias=alias,
            version=version,
            expected_version=current,
            traffic_share=share,
        )
    )


def row(loan_id: str, amount: float = 12000.0, decision_id: str = "") -> im.PredictionInput:
    return im.PredictionInput(
        entity_keys={"loan_id": fs.Value(string_value=loan_id)},
        request_features={"requested_amount": fs.Value(float64_value=amount)},
        decision_id=decision_id,
    )


async def predict(
    inference: InferenceStub, model: str, rows: list[im.PredictionInput], **kwargs: object
) -> rr.PredictResponse:
    return await inference.Predict(  # type: ignore[no-any-return]
        rr.PredictRequest(model_name=model, rows=rows, **kwargs), timeout=10
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = ""
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.05)


async def serving_version(inference: InferenceStub, model: str, alias: str = "production") -> int:
    try:
        answer = await inference.GetDeployment(
            rr.GetDeploymentRequest(model_name=model, alias=alias)
        )
    except Exception:
        return 0
    return int(answer.deployment.serving_version)


async def inference_events(db_pool: asyncpg.Pool, event_type: str) -> list[object]:
    """Every recorded inference event of ``event_type`` (e.g. ``DeploymentFailed``), decoded."""
    from services.inference.events import CATALOG

    full = f"lathe.inference.v1.{event_type}"
    rows = await db_pool.fetch(
        "SELECT payload FROM inference.events WHERE event_type = $1 ORDER BY global_position",
        full,
    )
    return [CATALOG.decode(full, bytes(r["payload"])) for r in rows]
