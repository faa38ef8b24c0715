"""The SDK's InferenceClient and `lathe predict` / `lathe deployments` against real services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import pytest

from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from libs.sdk.inference import DeploymentRefused, InferenceClient, PredictRow
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    register,
    row,
    serving_version,
    set_alias,
    with_noise,
)
from tests.support.cli import run_lathe

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _deployed(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> tuple[str, int]:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    version = await register(registry, credit, name, export(credit, seed=4))
    await set_alias(registry, name, "production", version)
    return name, version


async def test_the_sdk_scores_rows_and_shows_deployments(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    name, version = await _deployed(registry, credit, start_inference)
    async with start_inference(name) as stub:
        await eventually(lambda: _serves(stub, name, version), what="serves")
        client = InferenceClient(stub, timeout_s=5.0)
        loans = credit.loan_ids[:2]
        result = await client.predict(
            name,
            [
                PredictRow({"loan_id": loans[0]}, {"requested_amount": 9000.0}, decision_id="d-1"),
                PredictRow({"loan_id": loans[1]}, {"requested_amount": 15000.0}),
            ],
        )
        raw = await stub.Predict(
            rr.PredictRequest(model_name=name, rows=[row(loans[0], 9000.0), row(loans[1], 15000.0)])
        )
        assert [r.scores["probability"] for r in result.rows] == [
            p.scores[0] for p in raw.predictions
        ]
        first, second = result.rows
        assert first.decision_id == "d-1" and uuid.UUID(second.decision_id)
        assert first.model_version == version and first.arm == "primary"
        assert set(first.feature_event_times) == set(credit.features)
        assert first.feature_event_times[credit.features[0]] is not None
        assert result.trace_id
        assert result.features_read_at is not None  # the rows' reference time
        assert abs((datetime.now(UTC) - result.features_read_at).total_seconds()) < 60
        listed = await client.list_deployments(name)
        assert listed.ready and [d.alias for d in listed.deployments] == ["production"]
        deployment = await client.get_deployment(name)
        assert deployment.state == "serving" and deployment.warm
        assert deployment.serving_version == version and deployment.runtime == "onnxruntime_cpu"
        assert deployment.feature_names == tuple(credit.spec().feature_names)
        assert deployment.parity_max_abs_diff <= deployment.parity_tolerance
        # What will not change is not retried; it fails at once with the service's reason.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            mistyped = PredictRow({"loan_id": loans[0]}, {"requested_amount": "x"})
            await client.predict(name, [mistyped])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.get_deployment(name, "canary")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_lathe_predict_and_deployments(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    test_settings: LatheSettings,
) -> None:
    name, version = await _deployed(registry, credit, start_inference)
    async with start_inference(name) as stub:
        await eventually(lambda: _serves(stub, name, version), what="serves")
        loans = credit.loan_ids[:2]
        expected = await InferenceClient(stub).predict(
            name, [PredictRow({"loan_id": loan}, {"requested_amount": 12000.0}) for loan in loans]
        )
        code, output = await run_lathe(
            test_settings,
            "predict",
            name,
            "--entity",
            f"loan_id={loans[0]}",
            "-e",
            f"loan_id={loans[1]}",
            "--feature",
            "requested_amount=12000",
        )
        assert code == 0, output
        for r in expected.rows:
            assert f"{r.scores['probability']:.6g}" in output
        assert "primary" in output and f"loan_id={loans[1]}" in output and "trace " in output
        code, output = await run_lathe(test_settings, "deployments", "list", "--model", name)
        assert code == 0, output
        assert name in output and "serving" in output and f"v{version}" in output
        assert "onnxruntime_cpu" in output and "ready" in output
        code, output = await run_lathe(test_settings, "deployments", "show", name)
        assert code == 0, output
        assert "onnxruntime_cpu fp32" in output and "parity" in output
        code, output = await run_lathe(test_settings, "predict", "nope", "-e", "loan_id=x")
        assert code == 1 and "NOT_FOUND" in output
        code, output = await run_lathe(test_settings, "predict", name, "-e", "loan_id")
        assert code == 2 and "not name=value" in output


async def test_waiting_for_a_version_returns_when_it_serves_and_fails_fast_when_refused(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    test_settings: LatheSettings,
) -> None:
    name, good = await _deployed(registry, credit, start_inference)
    onnx_bytes, weights, prep = export(credit, seed=5)
    noisy = await register(registry, credit, name, (with_noise(onnx_bytes), weights, prep))
    never = await register(registry, credit, name, export(credit, seed=6))
    async with start_inference(name) as stub:
        client = InferenceClient(stub, timeout_s=5.0)
        deployment = await client.wait_until_serving(name, good, timeout_s=60)
        assert deployment.serving_version == good and deployment.warm

        await set_alias(registry, name, "production", noisy)
        with pytest.raises(DeploymentRefused) as refused:
            await client.wait_until_serving(name, noisy, timeout_s=60)
        assert refused.value.deployment.failure is not None
        assert refused.value.deployment.failure.stage == "parity"
        assert refused.value.deployment.serving_version == good  # the previous one serves
        progress: list[str] = []
        with pytest.raises(TimeoutError, match=rf"v{never} .*requested v{noisy}, serving v{good}"):
            await client.wait_until_serving(name, never, timeout_s=0.5, on_progress=progress.append)
        assert progress and all(f"serving v{good}" in where for where in progress)

        code, output = await run_lathe(
            test_settings, "deployments", "wait", name, "--version", str(noisy)
        )
        assert code == 1 and "DeploymentRefused" in output and "parity" in output, output
        await set_alias(registry, name, "production", good)
        code, output = await run_lathe(
            test_settings, "deployments", "wait", name, "--version", str(good), "--timeout", "60"
        )
        assert code == 0 and f"v{good} serves as production" in output, output


async def _serves(stub: InferenceStub, name: str, version: int) -> bool:
    return await serving_version(stub, name) == version
