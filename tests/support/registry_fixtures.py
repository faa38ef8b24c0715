"""Fixtures: a real model-registry host (Postgres + NATS + gRPC) inside the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest_asyncio

from lathe.model_registry.v1 import service_pb2_grpc
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from services.model_registry.service import SPEC
from tests.support.hosting import hosted


@pytest_asyncio.fixture(loop_scope="session")
async def registry_host(
    test_settings: LatheSettings, span_exporter: object
) -> AsyncIterator[ServiceHost]:
    async with hosted(SPEC, test_settings) as host:
        yield host


@pytest_asyncio.fixture(loop_scope="session")
async def registry(
    registry_host: ServiceHost, test_settings: LatheSettings
) -> AsyncIterator[service_pb2_grpc.ModelRegistryStub]:
    address = test_settings.service_addr(ServiceName.MODEL_REGISTRY)
    async with grpc.aio.insecure_channel(address) as channel:
        yield service_pb2_grpc.ModelRegistryStub(channel)
