"""The service host, with a tiny fake service, on real Postgres and NATS.

- the host configures what it builds from its settings alone: the pool's bounds and
  whether it may serve a non-loopback address without a token (not the environment);
- a service's own readiness check and Postgres together decide readiness, each change
  logged once;
- processes of a service share its port only when its spec asks.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient

from lathe.model_registry.v1 import service_pb2
from libs.config import LatheSettings, ServiceName
from libs.db.errors import DatabaseTimedOut
from libs.eventstore import EventCatalog
from libs.grpckit.server import LIVENESS_SERVICE
from libs.platform.health import health_status
from libs.runtime import ServiceComponents, ServiceContext, ServiceHost, ServiceSpec
from tests.conftest import free_port
from tests.support.infra import InfraEndpoints
from tests.support.tcp_proxy import cuttable_link

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_WATCHDOG_LOG = "libs.runtime.watchdog"


class _Readiness:
    """A service's readiness check whose answer the test sets."""

    def __init__(self, because: str | None) -> None:
        self.because = because
        self.raises: Exception | None = None

    def __call__(self) -> str | None:
        if self.raises is not None:
            raise self.raises
        return self.because


def _spec(
    *,
    readiness: _Readiness | None = None,
    contexts: list[ServiceContext] | None = None,
    reuse_port: bool = False,
    parts: dict[str, bool] | None = None,
    ready_without_postgres: bool = False,
    background: tuple[Any, ...] = (),
) -> ServiceSpec:
    """A service with no RPCs of its own, hosted as the model registry's name; ``parts``
    (mutated by the test) is its per-part health."""

    def build(context: ServiceContext) -> ServiceComponents:
        if contexts is not None:
            contexts.append(context)
        return ServiceComponents(
            registrations=(),
            readiness=readiness,
            part_health=None if parts is None else (lambda: dict(parts)),
            ready_without_postgres=ready_without_postgres,
            background=background,
        )

    return ServiceSpec(
        name=ServiceName.MODEL_REGISTRY,
        services=(REGISTRY,),
        catalog=EventCatalog([]),
        migrations=(),
        build=build,
        reuse_port=reuse_port,
    )


@pytest.fixture
def settings_for(
    infra: InfraEndpoints, nats_client: NatsClient, tmp_path: Path
) -> Any:  # the nats_client fixture deletes this run's streams at the end
    namespace = f"{infra.namespace}s{uuid.uuid4().hex[:6]}"
    address = f"127.0.0.1:{free_port()}"

    def settings(database_url: str, **overrides: Any) -> LatheSettings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "nats_url": infra.nats_url,
            "namespace": namespace,
            "home": tmp_path / "home",
            "shutdown_grace_s": 0.5,
            "relay_poll_interval_s": 0.2,
            "auth_token": None,
            "insecure": False,
            "model_registry_addr": address,
        }
        return LatheSettings(**{**values, **overrides})

    return settings


@asynccontextmanager
async def _running(spec: ServiceSpec, settings: LatheSettings) -> AsyncIterator[ServiceHost]:
    """The host once it has started (servicers bound), SERVING or not."""
    host = ServiceHost(spec, settings)
    task = asyncio.create_task(host.run())
    started = asyncio.create_task(host.started.wait())
    done, _ = await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if started not in done:
        started.cancel()
        if task in done:
            task.result()  # the start-up error
        raise TimeoutError("the host did not start within 30 s")
    try:
        yield host
    finally:
        host.request_stop()
        await task


async def _health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return int(reply.status)


async def _readiness_of(host: ServiceHost) -> int:
    """Readiness as a probe sees it; "" and the service's name must agree.

    The two are separate calls, and readiness may change between them (the tests change
    it on purpose): they are compared only when the service's own status read before and
    after the overall one is the same, i.e. nothing changed in between.
    """
    assert host.port is not None
    for _ in range(10):
        before = await _health(host.port, REGISTRY.full_name)
        overall = await _health(host.port)
        after = await _health(host.port, REGISTRY.full_name)
        if before == after:
            break
    else:
        raise AssertionError("readiness kept changing across 10 reads")
    assert overall == before, "readiness of '' and of the service's name differ"
    assert await _health(host.port, LIVENESS_SERVICE) == _SERVING, "liveness must not follow"
    return overall


async def _until_readiness(host: ServiceHost, status: int, what: str, within_s: float = 8) -> None:
    deadline = time.monotonic() + within_s
    while await _readiness_of(host) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s:g} s: {what}")
        await asyncio.sleep(0.1)


async def _stays(host: ServiceHost, status: int, for_s: float) -> None:
    """Readiness keeps ``status`` for ``for_s`` (more than one watchdog round)."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        assert await _readiness_of(host) == status
        await asyncio.sleep(0.25)


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == _WATCHDOG_LOG and text in r.getMessage()
    ]


async def test_the_service_readiness_check_and_postgres_decide_readiness_together(
    fresh_database_url: str, settings_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=_WATCHDOG_LOG)
    readiness = _Readiness("warming 2 production deployments")
    server = urlparse(fresh_database_url)
    async with cuttable_link(server.hostname or "127.0.0.1", server.port or 5432) as link:
        proxied = server._replace(netloc=f"{server.username}@127.0.0.1:{link.port}").geturl()
        async with _running(_spec(readiness=readiness), settings_for(proxied)) as host:
            # Started (Postgres answered, servicers bound) but the service is not ready.
            assert await _readiness_of(host) == _NOT_SERVING
            await _stays(host, _NOT_SERVING, 2.5)
            assert not host.serving.is_set()

            readiness.because = None
            await _until_readiness(host, _SERVING, "SERVING once the service is ready")
            assert host.serving.is_set()

            await link.cut()  # Postgres gone: NOT_SERVING though the service is ready
            await _until_readiness(host, _NOT_SERVING, "NOT_SERVING without Postgres")

            readiness.because = "production deployment fraud/3 failed to load"
            await link.restore()
            deadline = time.monotonic() + 10
            while not _messages(caplog, "Postgres answers again"):
                assert time.monotonic() < deadline, "Postgres did not answer again"
                await asyncio.sleep(0.1)
            await _stays(host, _NOT_SERVING, 2.5)  # Postgres is back, the service is not

            readiness.because = None
            await _until_readiness(host, _SERVING, "SERVING with both ready")

            readiness.raises = RuntimeError("deployer state unreadable")
            await _until_readiness(host, _NOT_SERVING, "NOT_SERVING while the check raises")
            await _stays(host, _NOT_SERVING, 2.5)
            readiness.raises = None
            await _until_readiness(host, _SERVING, "SERVING once the check answers again")

    # Each change logged once, however many watchdog rounds a state lasted.
    assert len(_messages(caplog, "not ready yet (warming 2 production deployments)")) == 1
    assert _messages(caplog, "Postgres lost") == ["model-registry: Postgres lost: NOT_SERVING"]
    assert _messages(caplog, "Postgres answers again") == [
        "model-registry: Postgres answers again: NOT_SERVING (the service is not ready: "
        "production deployment fraud/3 failed to load)"
    ]
    assert len(_messages(caplog, "reports not ready")) == 2  # fraud/3; the raising check
    assert len(_messages(caplog, "readiness check failed")) == 1
    assert len(_messages(caplog, "reports ready")) == 3


async def test_a_service_that_serves_from_memory_stays_ready_through_a_postgres_outage(
    fresh_database_url: str, settings_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Inference's case: taking every replica out of rotation at once would fail every
    call, which it answers from memory; the outage is still logged."""
    caplog.set_level(logging.INFO, logger=_WATCHDOG_LOG)
    server = urlparse(fresh_database_url)
    async with cuttable_link(server.hostname or "127.0.0.1", server.port or 5432) as link:
        proxied = server._replace(netloc=f"{server.username}@127.0.0.1:{link.port}").geturl()
        spec = _spec(readiness=_Readiness(None), ready_without_postgres=True)
        async with _running(spec, settings_for(proxied)) as host:
            await _until_readiness(host, _SERVING, "SERVING once started")
            await link.cut()
            deadline = time.monotonic() + 10
            while not _messages(caplog, "Postgres lost"):
                assert time.monotonic() < deadline, "the outage was not noticed"
                await asyncio.sleep(0.1)
            await _stays(host, _SERVING, 2.5)

    assert _messages(caplog, "Postgres lost") == ["model-registry: Postgres lost: SERVING"]


async def test_a_background_task_that_fails_is_reported_at_once(
    fresh_database_url: str, settings_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only at shutdown: a reconciliation that died silently ran never again."""
    caplog.set_level(logging.ERROR, logger="libs.runtime.host")

    async def fails(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.1)
        raise RuntimeError("the connection closed under a transaction")

    async with _running(_spec(background=(fails,)), settings_for(fresh_database_url)):
        deadline = time.monotonic() + 5
        while not [r for r in caplog.records if "failed; its work stopped" in r.getMessage()]:
            assert time.monotonic() < deadline, "the failure was not reported while running"
            await asyncio.sleep(0.05)


async def test_a_service_without_a_readiness_check_serves_once_started(
    fresh_database_url: str, settings_for: Any
) -> None:
    async with _running(_spec(), settings_for(fresh_database_url)) as host:
        assert host.serving.is_set()
        assert await _readiness_of(host) == _SERVING


async def test_the_pool_is_bounded_by_the_settings_not_the_environment(
    fresh_database_url: str, settings_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    contexts: list[ServiceContext] = []
    settings = settings_for(fresh_database_url, db_command_timeout_s=0.5, db_acquire_timeout_s=0.3)
    monkeypatch.setenv("LATHE_DB_COMMAND_TIMEOUT_S", "60")
    monkeypatch.setenv("LATHE_DB_ACQUIRE_TIMEOUT_S", "60")
    async with _running(_spec(contexts=contexts), settings):
        pool = contexts[0].pool
        started = time.monotonic()
        with pytest.raises(DatabaseTimedOut, match=r"within 0\.5 s"):
            await pool.fetchval("SELECT pg_sleep(3)")
        assert time.monotonic() - started < 2

        held = []
        try:
            async with asyncio.timeout(10):  # the environment's 60 s would fail here
                with pytest.raises(DatabaseTimedOut, match=r"within 0\.3 s"):
                    for _ in range(pool.get_max_size() + 1):
                        held.append(await pool.acquire())
        finally:
            for connection in held:
                await pool.release(connection)


async def test_insecure_comes_from_the_settings_not_the_environment(
    fresh_database_url: str, settings_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"0.0.0.0:{free_port()}"
    refused = settings_for(fresh_database_url, model_registry_addr=address, insecure=False)
    allowed = settings_for(fresh_database_url, model_registry_addr=address, insecure=True)

    monkeypatch.setenv("LATHE_INSECURE", "1")
    with pytest.raises(RuntimeError, match=r"refusing to serve 0\.0\.0\.0"):
        async with _running(_spec(), refused):
            pass

    monkeypatch.delenv("LATHE_INSECURE")
    async with _running(_spec(), allowed) as host:
        assert await _readiness_of(host) == _SERVING


async def test_processes_share_the_port_only_when_the_spec_asks(
    fresh_database_url: str, settings_for: Any
) -> None:
    settings = settings_for(fresh_database_url)
    shared = _spec(reuse_port=True)
    async with _running(shared, settings) as first, _running(shared, settings) as second:
        assert first.port == second.port
        assert await _readiness_of(first) == _SERVING
        assert await _readiness_of(second) == _SERVING

    async with _running(_spec(), settings):
        with pytest.raises(RuntimeError, match="is another process using it"):
            async with _running(_spec(), settings):
                pass


async def test_parts_are_published_under_the_service_name_and_go_not_serving_when_unlisted(
    fresh_database_url: str, settings_for: Any
) -> None:
    parts = {"credit": False, "credit/production": False}
    async with _running(_spec(parts=parts), settings_for(fresh_database_url)) as host:
        assert host.port is not None
        credit = f"{REGISTRY.full_name}/credit"
        address = f"127.0.0.1:{host.port}"

        async def part(name: str) -> str:
            return await health_status(address, service=name)

        assert await part(credit) == "NOT_SERVING"
        assert await part(f"{credit}/production") == "NOT_SERVING"
        assert await part(f"{credit}/canary") == "SERVICE_UNKNOWN"

        parts.update({"credit": True, "credit/production": True, "credit/canary": True})
        deadline = time.monotonic() + 8
        while await part(f"{credit}/canary") != "SERVING":
            assert time.monotonic() < deadline, "a new part was not published"
            await asyncio.sleep(0.1)
        assert await part(credit) == "SERVING"

        del parts["credit/canary"]  # e.g. the canary alias was deleted
        deadline = time.monotonic() + 8
        while await part(f"{credit}/canary") != "NOT_SERVING":
            assert time.monotonic() < deadline, "an unlisted part stayed SERVING"
            await asyncio.sleep(0.1)
        assert await part(credit) == "SERVING"
        assert await _readiness_of(host) == _SERVING  # parts do not decide readiness
