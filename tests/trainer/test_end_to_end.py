"""A small job end to end: a registered version with metrics, baseline and lineage."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.preprocessing import PreprocessingSpec, transform
from libs.sdk.model_registry import RegistryClient
from tests.trainer.helpers import DONE, Dataset, events, spec, submit, wait_for


async def test_a_small_job_registers_a_version_with_metrics_baseline_and_lineage(
    trainer: TrainerStub,
    registry: ModelRegistryStub,
    dataset: Dataset,
    span_exporter: InMemorySpanExporter,
) -> None:
    job_id = await submit(
        trainer,
        spec(
            dataset,
            model={
                "family": "ft_transformer",
                "hyperparameters": {"d_token": 16, "n_blocks": 1, "n_heads": 2},
            },
        ),
    )

    job = await wait_for(trainer, job_id, DONE)

    assert job.state == message_pb2.JOB_STATE_SUCCEEDED, job.failure_reason
    kinds = [e.WhichOneof("event") for e in await events(trainer, job_id)]
    assert kinds[:4] == ["submitted", "queued", "preparing", "dataset_prepared"]
    assert kinds[-4:] == ["evaluated", "exported", "registered", "succeeded"]
    assert kinds.count("epoch_completed") == 2 and "checkpointed" in kinds
    version = (
        await registry.GetModelVersion(
            reg_rr.GetModelVersionRequest(model_name=dataset.model_name, version=job.model_version)
        )
    ).model_version
    assert set(version.metrics) >= {"auc", "log_loss", "ks", "ece", "baseline.lightgbm.auc"}
    assert version.metrics["auc"] > 0.6 and version.metrics["baseline.lightgbm.auc"] > 0.6
    assert version.lineage.training_job_id == job_id
    assert version.lineage.dataset_snapshot_id == job.dataset_snapshot_id.strip() != ""
    assert version.lineage.feature_service == dataset.feature_service
    assert version.lineage.feature_service_version == "1"
    assert version.lineage.code_revision
    assert version.tags["spec_digest"] == job.spec_digest
    assert {a.name for a in version.artifacts} == {
        "model.onnx",
        "weights.safetensors",
        "preprocessing.json",
        "signature.json",
    }

    # The registered ONNX, fed by the shared preprocessing library, scores like torch did:
    # the job checked |p_onnx - p_torch| < 1e-5 on the validation rows and recorded it.
    exported = next(e.exported for e in await events(trainer, job_id) if e.HasField("exported"))
    assert exported.parity_max_abs_diff < 1e-5
    client = RegistryClient(registry)
    onnx_bytes = (await client.download(dataset.model_name, version.version, "model.onnx")).content
    pre = PreprocessingSpec.from_json(
        (await client.download(dataset.model_name, version.version, "preprocessing.json")).content
    )
    rows = {
        "apps_" + dataset.suffix + ":income": [50_000.0, None],
        "apps_" + dataset.suffix + ":rate": [7.5, 24.0],
        "apps_" + dataset.suffix + ":grade": ["A", "Z-unseen"],
    }
    encoded = transform(pre, rows)
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (p,) = session.run(None, {"numeric": encoded.numeric, "categorical": encoded.categorical})
    assert p.shape == (2,) and np.all((p > 0) & (p < 1)) and p[1] > p[0]
    signature = json.loads(
        (await client.download(dataset.model_name, version.version, "signature.json")).content
    )
    assert [i["name"] for i in signature["inputs"]] == list(pre.feature_names)

    # One trace: submit -> data (the feature store's GetHistoricalFeatures inside) -> epochs
    # -> export -> registration (the registry's calls inside).
    spans = span_exporter.get_finished_spans()
    (root,) = [
        s for s in spans if s.name == "trainer.job" and s.attributes.get("lathe.job_id") == job_id
    ]
    names = {s.name for s in spans if s.context.trace_id == root.context.trace_id}
    for expected in (
        "SubmitTrainingJob",
        "trainer.data",
        "GetHistoricalFeatures",
        "trainer.epoch 1",
        "trainer.export",
        "trainer.register",
        "RegisterModelVersion",
    ):
        assert any(expected in name for name in names), (expected, sorted(names))
