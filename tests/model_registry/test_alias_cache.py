"""Resolved aliases served from memory: forgotten on every change, in every registry process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest_asyncio

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.message_pb2 import Alias
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from services.model_registry.app.alias_cache import CHANNEL, AliasCache
from services.model_registry.service import SPEC
from services.model_registry.store.queries import AliasState
from tests.conftest import free_port
from tests.model_registry.helpers import new_model
from tests.support import registry_client as client
from tests.support.hosting import hosted

PRODUCTION = "production"


@pytest_asyncio.fixture(loop_scope="session")
async def replica(
    registry: ModelRegistryStub, test_settings: LatheSettings
) -> AsyncIterator[ModelRegistryStub]:
    """A second registry process on the same database (the fixture ``registry`` is the first)."""
    address = f"127.0.0.1:{free_port()}"
    settings = test_settings.model_copy(update={"model_registry_addr": address})
    async with hosted(SPEC, settings), grpc.aio.insecure_channel(address) as channel:
        yield ModelRegistryStub(channel)


async def _resolve(stub: ModelRegistryStub, name: str) -> int:
    reply = await stub.ResolveAlias(rr.ResolveAliasRequest(model_name=name, alias=PRODUCTION))
    return reply.alias.version


async def _resolves_to(stub: ModelRegistryStub, name: str, version: int) -> bool:
    for _ in range(100):
        if await _resolve(stub, name) == version:
            return True
        await asyncio.sleep(0.05)
    return False


async def _listeners(pool: asyncpg.Pool) -> int:
    return await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN%lathe_model_registry_aliases%' AND datname = current_database()"
    )


async def _wait_for_listeners(pool: asyncpg.Pool, count: int) -> None:
    for _ in range(100):
        if await _listeners(pool) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} registries listen for alias changes")


async def _silently_point(pool: asyncpg.Pool, name: str, version: int) -> None:
    """Move the alias row with triggers off: a change no registry is told about (and one
    the event log does not hold: put it back before the test ends)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "UPDATE model_registry.aliases SET version = $2 WHERE model_name = $1 AND alias = $3",
            name,
            version,
            PRODUCTION,
        )


async def _model_with_versions(stub: ModelRegistryStub, count: int) -> str:
    name = await new_model(stub)
    for _ in range(count):
        await client.register(stub, name)
    return name


async def test_a_change_on_one_registry_reaches_another_that_had_it_in_memory(
    registry: ModelRegistryStub, replica: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    name = await _model_with_versions(registry, 3)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias=PRODUCTION, version=1))
    await _wait_for_listeners(db_pool, 2)  # both listen before anything is cached
    for _ in range(20):
        assert await _resolves_to(replica, name, 1)
        await _silently_point(db_pool, name, 3)
        if await _resolve(replica, name) == 1:
            break  # answered from memory
        # The lookup overlapped a notification (SetAlias replies right at its commit, so
        # the replica may hear of it late) and was rightly not kept; the one that read 3
        # may have been: put the row back, have the replica forget it, and try again.
        await _silently_point(db_pool, name, 1)
        await db_pool.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps([name, PRODUCTION]))
    else:
        raise AssertionError("the replica read Postgres every time: nothing was cached")

    await registry.SetAlias(
        rr.SetAliasRequest(model_name=name, alias=PRODUCTION, version=2, expected_version=3)
    )
    assert await _resolves_to(replica, name, 2), "the replica kept serving the old version"


async def test_a_registry_sees_its_own_move_at_once(registry: ModelRegistryStub) -> None:
    name = await _model_with_versions(registry, 2)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias=PRODUCTION, version=1))
    assert await _resolve(registry, name) == 1
    await registry.SetAlias(
        rr.SetAliasRequest(model_name=name, alias=PRODUCTION, version=2, expected_version=1)
    )
    assert await _resolve(registry, name) == 2


async def test_after_losing_its_listener_a_registry_stops_trusting_memory(
    registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    name = await _model_with_versions(registry, 2)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias=PRODUCTION, version=1))
    await _wait_for_listeners(db_pool, 1)
    assert await _resolve(registry, name) == 1  # cached

    await db_pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN%lathe_model_registry_aliases%' AND datname = current_database()"
    )
    await _silently_point(db_pool, name, 2)  # a change whose notification nobody received
    try:
        assert await _resolves_to(registry, name, 2)
    finally:  # back to what the event log says, for tests that replay it
        await _silently_point(db_pool, name, 1)


async def test_an_answer_that_raced_a_change_is_not_kept(db_pool: asyncpg.Pool) -> None:
    """A lookup that read Postgres before a change must not store its older answer."""
    answers = iter([AliasState(Alias(version=1), 1), AliasState(Alias(version=2), 2)])
    calls = 0

    async def lookup(model_name: str, alias: str) -> AliasState | None:
        nonlocal calls
        calls += 1
        answer = next(answers)
        if answer.alias.version == 1:
            cache.forget(model_name, alias)  # the change lands while this lookup is in flight
        return answer

    cache = AliasCache(db_pool, lookup)
    stop = asyncio.Event()
    listening = asyncio.create_task(cache.run(stop))
    try:
        for _ in range(100):
            if cache.listening:
                break
            await asyncio.sleep(0.02)
        assert cache.listening
        assert (await cache.alias("m", PRODUCTION)).alias.version == 1  # type: ignore[union-attr]
        assert (await cache.alias("m", PRODUCTION)).alias.version == 2  # type: ignore[union-attr]
        assert (await cache.alias("m", PRODUCTION)).alias.version == 2  # type: ignore[union-attr]
        assert calls == 2, "the answer older than the change was kept, or the newer one was not"
    finally:
        stop.set()
        await listening
