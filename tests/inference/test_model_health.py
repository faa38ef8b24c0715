"""Each model (and each alias) has a health name, NOT_SERVING until its version is warm.

Clients and probes ask the standard gRPC health service for
``lathe.inference.v1.Inference/<model>`` (its production deployment, what Predict uses
by default) or ``.../<model>/<alias>``; the whole service's health stays "every
production deployment warm".
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.inference.v1 import service_pb2
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import Credit, create_model, eventually, export, register, set_alias

pytestmark = pytest.mark.asyncio(loop_scope="session")

_INFERENCE = service_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(address: str, name: str) -> int | None:
    """The health of ``name``; None while the service does not know it."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=2
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
    return int(reply.status)


async def test_a_model_and_its_aliases_are_serving_once_warm_and_not_after_removal(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    test_settings: LatheSettings,
) -> None:
    name = f"health-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1 = await register(registry, credit, name, export(credit, seed=1))
    v2 = await register(registry, credit, name, export(credit, seed=2))
    await set_alias(registry, name, "production", v1)
    address = test_settings.service_addr(ServiceName.INFERENCE)
    model, canary = f"{_INFERENCE}/{name}", f"{_INFERENCE}/{name}/canary"
    async with start_inference(name):

        async def is_(health_name: str, status: int | None) -> bool:
            return await _health(address, health_name) == status

        await eventually(lambda: is_(model, _SERVING), what="the model SERVING once warm")
        assert await _health(address, f"{model}/production") == _SERVING
        assert await _health(address, canary) is None  # no canary followed yet

        await set_alias(registry, name, "canary", v2, share=0.2)
        await eventually(lambda: is_(canary, _SERVING), what="the canary SERVING once warm")

        await registry.DeleteAlias(
            reg_rr.DeleteAliasRequest(model_name=name, alias="canary", expected_version=v2)
        )
        await eventually(lambda: is_(canary, _NOT_SERVING), what="a removed alias NOT_SERVING")
        assert await _health(address, model) == _SERVING
