"""Fixtures of the trainer tests: the feature store, the registry and the trainer, all real."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest_asyncio

from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from services.trainer.service import SPEC
from tests.support.hosting import hosted
from tests.trainer.helpers import Dataset, make_dataset


@pytest_asyncio.fixture(loop_scope="session")
async def trainer_host(
    test_settings: LatheSettings, feature_store_host: ServiceHost, registry_host: ServiceHost
) -> AsyncIterator[ServiceHost]:
    async with hosted(SPEC, test_settings) as host:
        yield host


@pytest_asyncio.fixture(loop_scope="session")
async def trainer(
    trainer_host: ServiceHost, test_settings: LatheSettings
) -> AsyncIterator[TrainerStub]:
    async with grpc.aio.insecure_channel(
        test_settings.service_addr(ServiceName.TRAINER)
    ) as channel:
        yield TrainerStub(channel)


@pytest_asyncio.fixture(loop_scope="session")
async def dataset(
    features: FeatureStoreStub, registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> Dataset:
    return await make_dataset(features, registry, db_pool)
