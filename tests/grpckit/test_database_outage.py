"""A database that goes away or goes silent, behind a real gRPC server (ADR 0014).

Postgres is the suite's real server, reached through a TCP proxy (``tcp_proxy``) that
cuts or stalls the link: the shared server itself is never stopped. Calls must get
UNAVAILABLE (never INTERNAL) with one log line per outage, a stalled statement must
end by the call's deadline or the pool's command timeout, and a transaction cut off
half-way must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlparse

import asyncpg
import grpc
import pytest
import pytest_asyncio

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1 import service_pb2, service_pb2_grpc
from libs.db import connect_pool, transaction
from libs.grpckit import GrpcServer
from tests.support.tcp_proxy import CuttableLink, cuttable_link

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
COMMAND_TIMEOUT_S = 2.0
ACQUIRE_TIMEOUT_S = 1.5
TABLE = "kit_outage_models"


class DatabaseBackedRegistry(service_pb2_grpc.ModelRegistryServicer):
    """GetModel reads through the pool; CreateModel inserts, then pauses, then reads again."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.inserted = asyncio.Event()
        self.go_on = asyncio.Event()
        self.finished = asyncio.Event()

    async def GetModel(self, request: rr.GetModelRequest, context: object) -> rr.GetModelResponse:
        try:
            name = await self._pool.fetchval("SELECT $1::text", request.name)
            return rr.GetModelResponse(model={"name": name})
        finally:
            self.finished.set()

    async def CreateModel(
        self, request: rr.CreateModelRequest, context: object
    ) -> rr.CreateModelResponse:
        try:
            async with transaction(self._pool) as conn:
                await conn.execute(f"INSERT INTO {TABLE} (name) VALUES ($1)", request.name)
                self.inserted.set()
                await self.go_on.wait()
                await conn.fetchval(f"SELECT count(*) FROM {TABLE}")
            return rr.CreateModelResponse()
        finally:
            self.finished.set()


@dataclass
class Rig:
    link: CuttableLink
    servicer: DatabaseBackedRegistry
    stub: service_pb2_grpc.ModelRegistryStub
    direct: asyncpg.Pool
    """Straight to Postgres, not through the link: what really is in the database."""


@pytest_asyncio.fixture
async def rig(database_url: str, db_pool: asyncpg.Pool) -> AsyncIterator[Rig]:
    await db_pool.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (name text PRIMARY KEY)")
    server_url = urlparse(database_url)
    async with cuttable_link(server_url.hostname or "127.0.0.1", server_url.port or 5432) as link:
        proxied = server_url._replace(netloc=f"{server_url.username}@127.0.0.1:{link.port}")
        pool = await connect_pool(
            proxied.geturl(),
            min_size=1,
            max_size=2,
            application_name="kit-outage-test",
            command_timeout_s=COMMAND_TIMEOUT_S,
            acquire_timeout_s=ACQUIRE_TIMEOUT_S,
        )
        servicer = DatabaseBackedRegistry(pool)
        server = GrpcServer(address="127.0.0.1:0", services=[REGISTRY])
        await server.start()
        server.bind(lambda s: service_pb2_grpc.add_ModelRegistryServicer_to_server(servicer, s))
        await server.set_serving(True)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = service_pb2_grpc.ModelRegistryStub(channel)
                assert (await stub.GetModel(rr.GetModelRequest(name="warm"))).model.name == "warm"
                yield Rig(link, servicer, stub, db_pool)
        finally:
            await server.stop(0)
            pool.terminate()


async def _status(call: object) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


async def test_a_cut_link_answers_unavailable_and_is_logged_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await rig.link.cut()

    results = [await _status(rig.stub.GetModel(rr.GetModelRequest(name=f"m{i}"))) for i in range(6)]

    assert {code for code, _, _ in results} == {grpc.StatusCode.UNAVAILABLE}, results
    assert all("database is unreachable" in details for _, details, _ in results), results
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]
    assert unreachable[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    await rig.link.restore()
    for _ in range(20):  # the pool reconnects on the next acquire
        code, _, _ = await _status(rig.stub.GetModel(rr.GetModelRequest(name="back")))
        if code == grpc.StatusCode.OK:
            break
        await asyncio.sleep(0.1)
    assert code == grpc.StatusCode.OK
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(back) == 1
    assert "6 statements or connection attempts failed" in back[0].getMessage()


async def test_a_stalled_statement_ends_at_the_calls_deadline(rig: Rig) -> None:
    await rig.link.stall()
    rig.servicer.finished.clear()

    code, _, elapsed = await _status(rig.stub.GetModel(rr.GetModelRequest(name="x"), timeout=1.0))

    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.5
    # The server gave up too, and its connection went with it (not back to the pool
    # waiting for a cancel that cannot arrive, holding a pool slot).
    await asyncio.wait_for(rig.servicer.finished.wait(), 0.5)


async def test_a_stalled_statement_without_deadline_ends_at_the_command_timeout(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await rig.link.stall()

    # The client's own timeout only keeps the test from hanging: the server sees no deadline.
    call = rig.stub.GetModel(rr.GetModelRequest(name="x"))
    code, details, elapsed = await asyncio.wait_for(_status(call), COMMAND_TIMEOUT_S + 5)

    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "LATHE_DB_COMMAND_TIMEOUT_S" in details
    assert COMMAND_TIMEOUT_S - 0.2 < elapsed < COMMAND_TIMEOUT_S + 0.8
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("deadline_s", [1.0, None])
async def test_a_transaction_cut_off_half_way_leaves_nothing_behind(
    rig: Rig, deadline_s: float | None
) -> None:
    name = f"half-{deadline_s}"
    call = asyncio.ensure_future(
        rig.stub.CreateModel(rr.CreateModelRequest(name=name), timeout=deadline_s)
    )
    await asyncio.wait_for(rig.servicer.inserted.wait(), 2)
    await rig.link.stall()
    rig.servicer.go_on.set()

    code, _, _ = await asyncio.wait_for(_status(call), COMMAND_TIMEOUT_S + 5)

    assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    await asyncio.wait_for(rig.servicer.finished.wait(), 1)
    # The session that held the insert ended (Postgres rolled it back): the same key can
    # be written at once instead of waiting on its row lock, and only once.
    async with transaction(rig.direct) as conn:
        await conn.execute("SET LOCAL lock_timeout = '2s'")
        assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE name = $1", name) == 0
        await conn.execute(f"INSERT INTO {TABLE} (name) VALUES ($1)", name)
