"""Deployments follow the registry: alias moves under load, rollback, refusals, restarts."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    predict,
    register,
    row,
    serving_version,
    set_alias,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_alias_moves_and_rollback_serve_with_zero_failed_requests(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1 = await register(registry, credit, name, export(credit, seed=1))
    v2 = await register(registry, credit, name, export(credit, seed=2))
    await set_alias(registry, name, "production", v1)
    async with start_inference(name) as inference:
        await eventually(lambda: _serves(inference, name, v1), what="v1 serves")
        seen: dict[int, set[float]] = {v1: set(), v2: set()}
        failures: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    answer = await predict(inference, name, [row(credit.loan_ids[i % 50])])
                    p = answer.predictions[0]
                    seen[p.model_version].add(round(p.scores[0], 9))
                except grpc.aio.AioRpcError as error:
                    failures.append(f"{error.code().name}: {error.details()}")

        clients = [asyncio.create_task(load()) for _ in range(4)]
        await asyncio.sleep(0.3)
        moved = asyncio.get_running_loop().time()
        await set_alias(registry, name, "production", v2)
        await eventually(lambda: _serves(inference, name, v2), timeout_s=10, what="v2 serves")
        took = asyncio.get_running_loop().time() - moved
        await asyncio.sleep(0.3)
        rolled = asyncio.get_running_loop().time()
        await set_alias(registry, name, "production", v1)  # rollback: v1 is still loaded
        await eventually(lambda: _serves(inference, name, v1), timeout_s=10, what="rollback")
        rollback_took = asyncio.get_running_loop().time() - rolled
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        assert seen[v1] and seen[v2] and not seen[v1] & seen[v2]  # two different models served
        assert took < 10 and rollback_took < 5
        deployment = (
            await inference.GetDeployment(rr.GetDeploymentRequest(model_name=name))
        ).deployment
        assert deployment.serving_version == v1 and deployment.previous_version == v2
        assert deployment.warm and deployment.state == m.DEPLOYMENT_STATE_SERVING
        assert deployment.runtime == m.RUNTIME_KIND_ONNXRUNTIME_CPU
        assert deployment.runtime_details.parity_max_abs_diff <= 1e-5


async def _serves(inference, name: str, version: int) -> bool:  # type: ignore[no-untyped-def]
    return await serving_version(inference, name) == version
