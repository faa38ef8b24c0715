"""Each model (and each alias) has a health name, NOT_SERVING until its version is warm.

Clients and probes ask the standard gRPC health service for
``lathe.inference.v1.Inference/<model>`` (its production deployment, what Predict uses
by default) or ``.../<model>/<alias>``; the whole service's health stays "every
production deployment warm".
"""

from __future__ import annotations

import uuid

import pytest

from lathe.inference.v1 import service_pb2
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from libs.platform.health import health_status
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import Credit, create_model, eventually, export, register, set_alias

pytestmark = pytest.mark.asyncio(loop_scope="session")

_INFERENCE = service_pb2.DESCRIPTOR.services_by_name["Inference"].full_name


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

        async def is_(part: str, status: str) -> bool:
            return await health_status(address, service=part) == status

        await eventually(lambda: is_(model, "SERVING"), what="the model SERVING once warm")
        assert await is_(f"{model}/production", "SERVING")
        assert await is_(canary, "SERVICE_UNKNOWN")  # no canary followed yet

        await set_alias(registry, name, "canary", v2, share=0.2)
        await eventually(lambda: is_(canary, "SERVING"), what="the canary SERVING once warm")

        await registry.DeleteAlias(
            reg_rr.DeleteAliasRequest(model_name=name, alias="canary", expected_version=v2)
        )
        await eventually(lambda: is_(canary, "NOT_SERVING"), what="a removed alias NOT_SERVING")
        assert await is_(model, "SERVING")
