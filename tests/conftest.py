"""Fixtures shared by the whole suite: real Postgres and NATS, isolated per run."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.config import LatheSettings, ServiceName
from libs.db import apply_migrations, connect_pool
from libs.eventstore import EventStore
from libs.telemetry.asyncpg_spans import RecordedTraceAsyncPGInstrumentor
from libs.telemetry.sampling import SkipUntracedClientCalls
from tests.support.infra import InfraEndpoints, provide_infra
from tests.support.ports import free_port

pytest_plugins = ["tests.support.registry_fixtures", "tests.support.feature_store_fixtures"]


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraEndpoints]:
    with provide_infra(tmp_path_factory.mktemp("infra")) as provided:
        yield provided


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(infra: InfraEndpoints) -> AsyncIterator[str]:
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
async def nats_client(infra: InfraEndpoints) -> AsyncIterator[NatsClient]:
    client = await nats.connect(infra.nats_url)
    yield client  # the run's streams are deleted with ``infra`` (tests/support/infra.py)
    await client.close()


@pytest.fixture
def js(nats_client: NatsClient) -> JetStreamContext:
    return nats_client.jetstream()


@pytest.fixture
def namespace(infra: InfraEndpoints) -> str:
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


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Every span this test process records (the global provider can be set only once)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tests"}), sampler=SkipUntracedClientCalls()
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    RecordedTraceAsyncPGInstrumentor().instrument(tracer_provider=provider)
    return exporter


@pytest.fixture
def test_settings(infra: InfraEndpoints, database_url: str, tmp_path: Path) -> LatheSettings:
    """Settings for a service hosted inside the test process, on free ports."""
    return LatheSettings(
        database_url=database_url,
        nats_url=infra.nats_url,
        namespace=infra.namespace,
        home=tmp_path / "lathe-home",
        shutdown_grace_s=1.0,
        relay_poll_interval_s=0.2,
        **{f"{name.value}_addr": f"127.0.0.1:{free_port()}" for name in ServiceName},
    )
