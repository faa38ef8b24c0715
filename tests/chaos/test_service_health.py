"""Readiness and liveness of a real service host through NATS trouble.

Readiness is about serving requests: a NATS outage must not take the registry out of
its load balancer while every write still commits (the outbox keeps the events).
Liveness is about what a restart fixes: a relay that cannot publish while NATS and
Postgres both answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import asyncpg
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from libs.grpckit.server import LIVENESS_SERVICE
from libs.messaging import EventStreamNames, connect_nats, ensure_stream
from libs.runtime import ServiceHost
from services.model_registry.service import SPEC
from tests.chaos.private_nats import PrivateNats
from tests.conftest import free_port
from tests.model_registry.helpers import new_model
from tests.support.infra import InfraEndpoints

pytestmark = pytest.mark.slow

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_STUCK_AFTER_S = 3.0


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_database_url(infra: InfraEndpoints) -> AsyncIterator[str]:
    """A database of this test's own: the hosted registry's schema and relay start empty."""
    name = f"{infra.database_name}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlparse(infra.admin_database_url)._replace(path=f"/{name}").geturl()
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _settings(database_url: str, nats_url: str, namespace: str, home: Path) -> LatheSettings:
    return LatheSettings(
        database_url=database_url,
        nats_url=nats_url,
        namespace=namespace,
        home=home,
        shutdown_grace_s=1.0,
        relay_poll_interval_s=0.2,
        relay_stuck_after_s=_STUCK_AFTER_S,
        relay_ack_timeout_s=1.0,
        **{f"{name.value}_addr": f"127.0.0.1:{free_port()}" for name in ServiceName},
    )


@contextlib.asynccontextmanager
async def _registry(settings: LatheSettings) -> AsyncIterator[tuple[ServiceHost, grpc.aio.Channel]]:
    """The registry hosted as `lathe up` runs it (a relay declared stuck after 3 s)."""
    host = ServiceHost(SPEC, settings)
    running = asyncio.create_task(host.run())
    serving = asyncio.create_task(host.serving.wait())
    await asyncio.wait({running, serving}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not serving.done():
        serving.cancel()
        if running.done():
            running.result()
        raise TimeoutError("the registry did not reach SERVING")
    try:
        async with grpc.aio.insecure_channel(
            settings.service_addr(ServiceName.MODEL_REGISTRY)
        ) as channel:
            yield host, channel
    finally:
        host.request_stop()
        await running


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


async def _stream_messages(js: JetStreamContext, stream: str) -> int:
    try:
        return int((await js.stream_info(stream)).state.messages)
    except NotFoundError:
        return 0


async def _until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what}")
        await asyncio.sleep(0.1)


async def test_liveness_fails_while_the_relay_is_stuck_and_nats_answers(
    fresh_database_url: str, infra: InfraEndpoints, js: JetStreamContext, tmp_path: Path
) -> None:
    namespace = f"{infra.namespace}h{uuid.uuid4().hex[:6]}"
    settings = _settings(fresh_database_url, infra.nats_url, namespace, tmp_path / "home")
    names = EventStreamNames(namespace, ServiceName.MODEL_REGISTRY.value)
    try:
        async with _registry(settings) as (host, channel):
            registry = ModelRegistryStub(channel)
            await new_model(registry)
            await _until(
                lambda: _stream_count_is(js, names.stream, 1), 10, "the first event relayed"
            )
            assert await _health(channel, LIVENESS_SERVICE) == _SERVING

            # The stream vanishes while NATS keeps answering: nothing can be published.
            await js.delete_stream(names.stream)
            for _ in range(3):
                await new_model(registry)

            async def liveness_fails() -> bool:
                assert await _health(channel, "") == _SERVING, "readiness must not follow relay"
                return await _health(channel, LIVENESS_SERVICE) == _NOT_SERVING

            await _until(liveness_fails, _STUCK_AFTER_S + 12, "liveness NOT_SERVING")
            assert host.relay is not None
            await _until(
                lambda: _true(host.relay is not None and (host.relay.backlog or 0) >= 3),
                10,
                "the relay's backlog gauge counts the 3 waiting events",
            )

            # Restarting would recreate the stream; doing it by hand lets the relay resume.
            await ensure_stream(
                js,
                names.stream,
                [names.all_subjects],
                duplicate_window_s=settings.duplicate_window_s,
            )
            await _until(lambda: _serving(channel, LIVENESS_SERVICE), 15, "liveness SERVING again")
            await _until(
                lambda: _stream_count_is(js, names.stream, 3), 10, "the 3 waiting events relayed"
            )
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(names.stream)


async def test_a_nats_outage_keeps_the_service_ready_and_writes_succeed(
    fresh_database_url: str, tmp_path: Path
) -> None:
    nats_server = PrivateNats(tmp_path / "nats")
    await nats_server.start()
    settings = _settings(fresh_database_url, nats_server.url, "lathe", tmp_path / "home")
    names = EventStreamNames("lathe", ServiceName.MODEL_REGISTRY.value)
    checker = await connect_nats(nats_server.url, name="checker")
    js = checker.jetstream()
    try:
        async with _registry(settings) as (_, channel):
            registry = ModelRegistryStub(channel)
            await new_model(registry)
            await _until(lambda: _stream_count_is(js, names.stream, 1), 10, "first event relayed")

            await nats_server.sigkill()
            # Longer than two watchdog rounds and than the relay's stuck threshold.
            loop = asyncio.get_running_loop()
            outage_ends = loop.time() + _STUCK_AFTER_S + 5
            written = 0
            while loop.time() < outage_ends:
                await new_model(registry)  # a write commits (its event waits in the outbox)
                written += 1
                assert await _health(channel, "") == _SERVING, "NOT_SERVING in a NATS outage"
                assert await _health(channel, LIVENESS_SERVICE) == _SERVING
                await asyncio.sleep(0.5)

            await nats_server.start()
            await _until(
                lambda: _stream_count_is(js, names.stream, 1 + written),
                30,
                f"the {written} events written during the outage relayed",
            )
            await asyncio.sleep(1.0)
            assert await _stream_messages(js, names.stream) == 1 + written
    finally:
        with contextlib.suppress(Exception):
            await checker.close()
        nats_server.stop()


async def _stream_count_is(js: JetStreamContext, stream: str, count: int) -> bool:
    with contextlib.suppress(Exception):  # reconnecting
        return await _stream_messages(js, stream) >= count
    return False


async def _serving(channel: grpc.aio.Channel, service: str) -> bool:
    return await _health(channel, service) == _SERVING


async def _true(value: bool) -> bool:
    return value
