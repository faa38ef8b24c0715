"""Fixtures of the inference tests: feature store, registry and inference, all real."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import grpc
import pytest_asyncio

from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from services.inference.config import InferenceSettings
from services.inference.service import build_spec
from tests.inference.helpers import Credit, make_credit
from tests.support.hosting import hosted

InferenceFactory = Callable[..., AbstractAsyncContextManager[InferenceStub]]


@pytest_asyncio.fixture(loop_scope="session")
async def credit(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> Credit:
    return await make_credit(features, db_pool)


@pytest_asyncio.fixture(loop_scope="session")
async def start_inference(
    test_settings: LatheSettings,
    feature_store_host: ServiceHost,
    registry_host: ServiceHost,
    registry: ModelRegistryStub,
) -> InferenceFactory:
    """Start an inference host following ``models`` (other tests' models are not loaded)."""

    @asynccontextmanager
    async def start(*models: str, **overrides: object) -> AsyncIterator[InferenceStub]:
        given: dict[str, object] = {
            "log_sample_rate": 1.0,
            "gpu_probe": False,
            "poll_interval_s": 0.05,
            **overrides,
        }
        settings = InferenceSettings(models=",".join(models), **given)  # type: ignore[arg-type]
        # Started, not SERVING: a test may hold readiness back (a production version it
        # makes inference refuse); each waits for what it needs.
        async with hosted(build_spec(settings), test_settings, until_serving=False):
            address = test_settings.service_addr(ServiceName.INFERENCE)
            async with grpc.aio.insecure_channel(address) as channel:
                yield InferenceStub(channel)

    return start
