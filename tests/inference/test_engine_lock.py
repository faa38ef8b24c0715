"""The engine build lock (``store/engines.py``) on real Postgres: a replica that stops
waiting for another one's build leaves no connection checked out and no lock behind.

Before the fix the build thread's timeout left the coroutine waiting in
``pg_advisory_lock``: it took the lock once the builder released it, on a pooled
connection nobody would release, and the key stayed locked for every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from libs.db import connect_pool
from services.inference.runtimes.base import TENSORRT
from services.inference.runtimes.keys import BatchProfile, EngineKey
from services.inference.store.engines import EngineBuildBusy, RegistryEngineCache


@pytest.fixture
def key() -> EngineKey:
    """A key of this test's own (advisory lock ids are per database, shared by tests)."""
    return EngineKey(
        TENSORRT, uuid.uuid4().hex * 2, "10.9.0", "9.0", "fp16", BatchProfile(1, 64, 1024)
    )


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Replica B's pool: one connection, so a leaked one shows as the pool being stuck."""
    pool = await connect_pool(database_url, min_size=0, max_size=1, acquire_timeout_s=2)
    yield pool
    pool.terminate()


@pytest_asyncio.fixture
async def replica_a(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Another replica's session, building the same key (or checking on it)."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def _cache(pool: asyncpg.Pool, lock_wait_s: float) -> RegistryEngineCache:
    loop = asyncio.get_running_loop()
    return RegistryEngineCache(None, pool, loop, lock_wait_s=lock_wait_s)  # type: ignore[arg-type]


def _lock_id(cache: RegistryEngineCache, key: EngineKey) -> int:
    return cache.lock(key)._id


async def _sessions_on(conn: asyncpg.Connection, lock_id: int) -> list[asyncpg.Record]:
    """Every session holding or awaiting the advisory lock ``lock_id`` (bigint form)."""
    return await conn.fetch(
        """SELECT pid, granted FROM pg_locks
           WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database
                                                       WHERE datname = current_database())
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1""",
        (lock_id >> 32) & 0xFFFFFFFF,
        lock_id & 0xFFFFFFFF,
    )


async def _assert_nothing_left(
    pool: asyncpg.Pool, replica_a: asyncpg.Connection, lock_id: int
) -> None:
    """B's pool has nothing checked out and, once A releases, nobody holds the key."""
    for _ in range(100):  # a cancelled wait cleans up on the loop, soon after the thread left
        if pool.get_idle_size() == pool.get_size():
            break
        await asyncio.sleep(0.02)
    assert pool.get_idle_size() == pool.get_size()
    async with pool.acquire(timeout=1):  # the pool's one connection is free
        pass
    await replica_a.execute("SELECT pg_advisory_unlock($1)", lock_id)
    await asyncio.sleep(0.3)  # a wait left running would be granted the lock now
    assert await _sessions_on(replica_a, lock_id) == []
    assert await replica_a.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
    await replica_a.execute("SELECT pg_advisory_unlock($1)", lock_id)


async def test_the_lock_is_held_while_building_and_free_after(
    pool: asyncpg.Pool, replica_a: asyncpg.Connection, key: EngineKey
) -> None:
    cache = _cache(pool, lock_wait_s=5)
    lock_id = _lock_id(cache, key)

    def build() -> bool:
        with cache.lock(key):  # a build thread's view
            return asyncio.run_coroutine_threadsafe(
                replica_a.fetchval("SELECT pg_try_advisory_lock($1)", lock_id), cache._loop
            ).result(5)

    assert await asyncio.to_thread(build) is False  # A could not take it meanwhile
    assert pool.get_idle_size() == pool.get_size()
    assert await replica_a.fetchval("SELECT pg_try_advisory_lock($1)", lock_id)
    await replica_a.execute("SELECT pg_advisory_unlock($1)", lock_id)


async def test_a_replica_gives_up_waiting_in_postgres_and_leaves_nothing_behind(
    pool: asyncpg.Pool, replica_a: asyncpg.Connection, key: EngineKey
) -> None:
    cache = _cache(pool, lock_wait_s=0.5)
    lock_id = _lock_id(cache, key)
    await replica_a.execute("SELECT pg_advisory_lock($1)", lock_id)  # A is building

    def build() -> str:
        with cache.lock(key):
            return "built"

    started = time.monotonic()
    with pytest.raises(EngineBuildBusy, match=r"held the build lock .* for over 0\.5s"):
        await asyncio.to_thread(build)
    assert time.monotonic() - started < 5
    await _assert_nothing_left(pool, replica_a, lock_id)


async def test_a_build_thread_that_gives_up_first_cancels_the_wait(
    pool: asyncpg.Pool, replica_a: asyncpg.Connection, key: EngineKey
) -> None:
    """The thread's own timeout (a backstop, normally past the lock wait) cancels the
    wait in Postgres too, and closes its session."""
    cache = _cache(pool, lock_wait_s=30)
    lock = cache.lock(key)
    await replica_a.execute("SELECT pg_advisory_lock($1)", lock._id)
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(cache._run, lock._take(30), 0.5)
    await _assert_nothing_left(pool, replica_a, lock._id)


async def test_a_result_that_arrives_after_the_thread_gave_up_is_discarded() -> None:
    """The race of a lock granted just as the cancel arrives: the coroutine completes
    anyway, and its result goes to ``discard``, not nowhere."""
    cache = RegistryEngineCache(None, None, asyncio.get_running_loop())  # type: ignore[arg-type]
    discarded: list[str] = []

    async def granted_as_cancelled() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # a lock granted in that instant
            await asyncio.sleep(5)
        return "connection holding the lock"

    async def discard(result: str) -> None:
        discarded.append(result)

    with pytest.raises(TimeoutError):
        await asyncio.to_thread(cache._run, granted_as_cancelled(), 0.1, discard)
    for _ in range(50):
        if discarded:
            break
        await asyncio.sleep(0.02)
    assert discarded == ["connection holding the lock"]
    assert await asyncio.to_thread(cache._run, asyncio.sleep(0, "done"), 5) == "done"
