"""Fixtures: a real feature-store host (Postgres + NATS + gRPC) inside the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest_asyncio

from lathe.feature_store.v1 import service_pb2_grpc
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from services.feature_store.service import SPEC
from tests.support.hosting import hosted


@pytest_asyncio.fixture(loop_scope="session")
async def feature_store_host(
    test_settings: LatheSettings, span_exporter: object
) -> AsyncIterator[ServiceHost]:
    async with hosted(SPEC, test_settings) as host:
        yield host


@pytest_asyncio.fixture(loop_scope="session")
async def features(
    feature_store_host: ServiceHost, test_settings: LatheSettings
) -> AsyncIterator[service_pb2_grpc.FeatureStoreStub]:
    address = test_settings.service_addr(ServiceName.FEATURE_STORE)
    async with grpc.aio.insecure_channel(address) as channel:
        yield service_pb2_grpc.FeatureStoreStub(channel)
