"""Fixtures shared by the whole suite: real Postgres and NATS, isolated per run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from libs.db import apply_migrations, connect_pool
from libs.eventstore import EventStore
from tests.support.infra import TestInfra, provide_infra


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestInfra]:
    with provide_infra(tmp_path_factory.mktemp("infra")) as provided:
        yield provided


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(infra: TestInfra) -> AsyncIterator[str]:
    """A database created for this run and dropped after it."""
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{infra.database_name}"')
    finally:
        await admin.close()
    yield infra.database_url
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{infra.database_name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, min_size=2, max_size=30)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_client(infra: TestInfra) -> AsyncIterator[NatsClient]:
    client = await nats.connect(infra.nats_url)
    yield client
    js = client.jetstream()
    for name in await js.streams_info():
        if name.config.name.lower().startswith(infra.namespace):
            await js.delete_stream(name.config.name)
    await client.close()


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()


@pytest.fixture
def namespace(infra: TestInfra) -> str:
    """This run's JetStream namespace (first subject token, stream-name prefix)."""
    return infra.namespace


@pytest.fixture
def unique_name() -> str:
    return f"x{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture(loop_scope="session")
async def event_store(db_pool: asyncpg.Pool, unique_name: str) -> EventStore:
    """An event store in a schema of its own, fresh for each test."""
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, unique_name, EventStore.migrations())
    return EventStore(db_pool, unique_name)
