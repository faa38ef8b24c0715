"""Versions that must not serve are refused, and the previous one keeps serving."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import onnx
import pytest
from nats.js import JetStreamContext
from onnx import helper
from opentelemetry.metrics import CallbackOptions

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from libs.messaging import EventStreamNames
from services.inference.app import metrics
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    inference_events,
    predict,
    register,
    row,
    serving_version,
    set_alias,
    with_noise,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _failure(inference, name: str) -> m.DeploymentFailure | None:  # type: ignore[no-untyped-def]
    deployment = (
        await inference.GetDeployment(rr.GetDeploymentRequest(model_name=name))
    ).deployment
    return deployment.failure if deployment.state == m.DEPLOYMENT_STATE_FAILED else None


def _deployment_metric(callback, model: str, alias: str = "production") -> float:  # type: ignore[no-untyped-def]
    """The inference service's metric (hosted in this process) for one deployment."""
    (value,) = [
        o.value
        for o in callback(CallbackOptions())
        if o.attributes == {"model": model, "alias": alias}
    ]
    return float(value)


async def test_corrupted_and_mismatching_versions_are_refused_and_the_previous_keeps_serving(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
) -> None:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1 = await register(registry, credit, name, export(credit, seed=1))
    corrupted = await register(registry, credit, name, export(credit, seed=2))
    onnx_bytes, weights, prep = export(credit, seed=3)
    noisy = await register(registry, credit, name, (with_noise(onnx_bytes), weights, prep))
    version = (
        await registry.GetModelVersion(
            reg_rr.GetModelVersionRequest(model_name=name, version=corrupted)
        )
    ).model_version
    (model_file,) = [a for a in version.artifacts if a.name == "model.onnx"]
    blob = Path(test_settings.artifact_dir) / "sha256" / model_file.sha256[:2] / model_file.sha256
    blob.write_bytes(blob.read_bytes()[:-7] + b"garbage")
    await set_alias(registry, name, "production", v1)
    async with start_inference(name) as inference:
        await eventually(lambda: _is(inference, name, v1), what="v1 serves")
        before = (await predict(inference, name, [row("L00003")])).predictions[0].scores[0]
        assert _deployment_metric(metrics.refused, name) == 0
        assert _deployment_metric(metrics.warm, name) == 1

        for bad, stage in ((corrupted, "verify"), (noisy, "parity")):
            await set_alias(registry, name, "production", bad)

            async def refused(bad: int = bad) -> bool:
                failure = await _failure(inference, name)
                return failure is not None and failure.version == bad

            await eventually(refused, what=f"v{bad} refused")
            failure = await _failure(inference, name)
            assert failure is not None and failure.stage == stage, failure
            answer = (await predict(inference, name, [row("L00003")])).predictions[0]
            assert answer.model_version == v1 and answer.scores[0] == before
            # What on-call sees (LatheInferenceVersionRefused watches the first).
            assert _deployment_metric(metrics.refused, name) == 1
            assert _deployment_metric(metrics.serving_versions, name) == v1
            assert _deployment_metric(metrics.requested_versions, name) == bad

        # The slot shows a refusal before its event is appended: wait for both events.
        async def failed_events() -> list[Any]:
            found = await inference_events(db_pool, "DeploymentFailed")
            return [e for e in found if e.model_name == name]

        async def both_recorded() -> bool:
            return len(await failed_events()) >= 2

        await eventually(both_recorded, what="both refusals recorded")
        events = await failed_events()
        assert [(e.version, e.stage, e.serving_version) for e in events] == [
            (corrupted, "verify", v1),
            (noisy, "parity", v1),
        ]
        assert "disagrees with ONNX Runtime" in events[1].reason


def _numeric_as_double(onnx_bytes: bytes) -> bytes:
    """The graph with its ``numeric`` input declared double (cast to float inside): ONNX
    Runtime loads it, then refuses the float32 rows preprocessing produces."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    (numeric,) = [i for i in graph.input if i.name == "numeric"]
    numeric.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    for node in graph.node:
        node.input[:] = ["numeric_float" if n == "numeric" else n for n in node.input]
    cast = helper.make_node("Cast", ["numeric"], ["numeric_float"], to=onnx.TensorProto.FLOAT)
    graph.node.insert(0, cast)
    return bytes(model.SerializeToString())


async def test_a_version_onnx_runtime_cannot_run_is_refused_once_at_load(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    db_pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before, ONNX Runtime's InvalidArgument escaped the load: no refusal was recorded
    and the version was downloaded and built again on every poll."""
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1 = await register(registry, credit, name, export(credit, seed=1))
    onnx_bytes, weights, prep = export(credit, seed=4)
    double = await register(registry, credit, name, (_numeric_as_double(onnx_bytes), weights, prep))
    await set_alias(registry, name, "production", v1)
    async with start_inference(name) as inference:
        await eventually(lambda: _is(inference, name, v1), what="v1 serves")
        caplog.set_level(logging.WARNING, logger="services.inference.app.loader")
        await set_alias(registry, name, "production", double)

        async def failed_events() -> list[Any]:
            found = await inference_events(db_pool, "DeploymentFailed")
            return [e for e in found if e.model_name == name]

        async def recorded() -> bool:
            return bool(await failed_events())

        await eventually(recorded, what=f"v{double} refused")
        failure = await _failure(inference, name)
        assert failure is not None and failure.version == double and failure.stage == "load"
        assert "tensor(double)" in failure.reason, failure.reason
        answer = (await predict(inference, name, [row("L00003")])).predictions[0]
        assert answer.model_version == v1
        assert _deployment_metric(metrics.refused, name) == 1

        await asyncio.sleep(20 * 0.05)  # twenty polls: it is not loaded again
        events = await failed_events()
        assert [(e.version, e.stage, e.serving_version) for e in events] == [(double, "load", v1)]
        refusals = [
            r for r in caplog.records if f"{name}/production v{double} refused" in r.message
        ]
        assert len(refusals) == 1, [r.message for r in refusals]


async def test_a_missed_alias_event_is_reconciled_at_restart(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    js: JetStreamContext,
    test_settings: LatheSettings,
) -> None:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1 = await register(registry, credit, name, export(credit, seed=1))
    v2 = await register(registry, credit, name, export(credit, seed=2))
    await set_alias(registry, name, "production", v1)
    async with start_inference(name) as inference:
        await eventually(lambda: _is(inference, name, v1), what="v1 serves")
    # While no inference process runs, the alias moves and its event is lost.
    await set_alias(registry, name, "production", v2)
    streams = EventStreamNames(test_settings.namespace, "model_registry")

    async def relayed() -> bool:
        info = await js.stream_info(streams.stream)
        return info.state.messages > 0

    await eventually(relayed, what="the registry relayed its events")
    await asyncio.sleep(0.5)  # the relay publishes the AliasSet, then it is purged
    await js.purge_stream(streams.stream, subject=streams.subject("alias.set"))
    async with start_inference(name) as inference:
        await eventually(lambda: _is(inference, name, v2), what="reconciled to v2")
        answer = (await predict(inference, name, [row("L00004")])).predictions[0]
        assert answer.model_version == v2


async def _is(inference, name: str, version: int) -> bool:  # type: ignore[no-untyped-def]
    return await serving_version(inference, name) == version
