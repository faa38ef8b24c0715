"""Compiled engines kept in the model registry, found by key.

An engine (a TensorRT plan, an AOTInductor package) is stored as a version of the
registry model ``inference.engines``: its one artifact is the serialized engine and its
tags are the ``EngineKey`` (ONNX digest, runtime version, compute capability, GPU model,
precision, batch profile, digest of Lathe's conversion code). A replica that needs an
engine looks for a version whose tags match the key exactly and builds only when there
is none; a build is serialised across replicas by a Postgres advisory lock on the key,
so no two replicas build the same engine. An engine whose tags differ in any component
is never loaded.

Build threads call ``get``/``put``/``lock`` synchronously; the registry and database
calls run on the service's event loop. Every wait ends on the loop's side first (the
lock wait inside Postgres, by ``lock_timeout``), and a build thread that still gives up
cancels what it waited for, so nothing it asked for completes after it left: a lock
taken then would be held, on a connection never released, until the process exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import grpc

from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from services.inference.runtimes.base import RuntimeUnavailable
from services.inference.runtimes.keys import EngineKey
from services.inference.store.registry import RegistryGateway

_log = logging.getLogger(__name__)
T = TypeVar("T")
ENGINE_MODEL = "inference.engines"
ENGINE_FILE = "engine.bin"
CALL_TIMEOUT_S = 600.0
"""How long a build thread waits for one registry call (a download or an upload)."""
LOCK_WAIT_S = 540.0
"""How long a replica waits for another one's build of the same engine."""
_GRACE_S = 30.0
"""How much longer than the lock wait the build thread waits: a connection from the
pool and Postgres's answer fit in it, so the wait ends in Postgres, not in the thread."""


class EngineBuildBusy(RuntimeUnavailable):
    """Another replica held the key's build lock for longer than this one would wait."""


class RegistryEngineCache:
    def __init__(
        self,
        registry: RegistryGateway,
        pool: asyncpg.Pool,
        loop: asyncio.AbstractEventLoop,
        *,
        lock_wait_s: float = LOCK_WAIT_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
    ) -> None:
        if lock_wait_s <= 0:
            raise ValueError(f"lock_wait_s must be positive, got {lock_wait_s}")
        self._registry = registry
        self._pool = pool
        self._loop = loop
        self._lock_wait_s = lock_wait_s
        self._call_timeout_s = call_timeout_s

    def get(self, key: EngineKey) -> bytes | None:
        return self._run(self._get(key), self._call_timeout_s)

    def put(self, key: EngineKey, engine: bytes) -> None:
        self._run(self._put(key, engine), self._call_timeout_s)

    def lock(self, key: EngineKey) -> _BuildLock:
        """Held while building ``key``: other replicas wait, then find it stored.
        ``EngineBuildBusy`` when another replica holds it past ``lock_wait_s``."""
        return _BuildLock(self, key)

    def _run(
        self,
        coroutine: Awaitable[T],
        timeout_s: float,
        discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """``coroutine``'s result, run on the loop. Not done within ``timeout_s``: it is
        cancelled, and a result it produces all the same (a lock granted as the cancel
        arrived) is handed to ``discard`` rather than dropped."""
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        runner = asyncio.run_coroutine_threadsafe(_deliver(coroutine, outcome, discard), self._loop)
        try:
            return outcome.result(timeout_s)
        except TimeoutError:
            if not outcome.cancel():  # delivered as the wait ended: the caller's after all
                return outcome.result()
            runner.cancel()
            raise TimeoutError(f"no answer within {timeout_s:g}s") from None

    async def _get(self, key: EngineKey) -> bytes | None:
        stub = self._registry.stub
        token = ""
        while True:
            try:
                page = await stub.ListModelVersions(
                    rr.ListModelVersionsRequest(
                        model_name=ENGINE_MODEL, page_size=200, page_token=token
                    ),
                    timeout=30,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            for version in page.model_versions:
                tags = dict(version.tags)
                if key.matches(tags):
                    (artifact,) = [a for a in version.artifacts if a.name == ENGINE_FILE]
                    return await self._registry.download(ENGINE_MODEL, version.version, artifact)
            token = page.next_page_token
            if not token:
                return None

    async def _put(self, key: EngineKey, engine: bytes) -> None:
        stub = self._registry.stub
        try:
            await stub.CreateModel(
                rr.CreateModelRequest(
                    name=ENGINE_MODEL,
                    owner="inference",
                    description="Compiled inference engines (TensorRT plans, AOTInductor "
                    "packages), one version per engine key",
                ),
                metadata=self._registry.metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        client = RegistryClient(stub, actor="inference")
        await client.register_version(
            VersionSpec(
                model_name=ENGINE_MODEL,
                description=f"engine {key.text}",
                signature=reg.Signature(
                    inputs=[reg.TensorSpec(name="onnx", dtype=reg.DATA_TYPE_FLOAT32)]
                ),
                tags=key.tags(),
            ),
            {ENGINE_FILE: ArtifactUpload(reg.ARTIFACT_FORMAT_OTHER, content=engine)},
        )


class _BuildLock:
    """A session advisory lock on the key's hash, on a connection of its own."""

    def __init__(self, cache: RegistryEngineCache, key: EngineKey) -> None:
        self._cache = cache
        self._key = key
        self._id = int.from_bytes(
            hashlib.sha256(key.text.encode()).digest()[:8], "big", signed=True
        )
        self._conn: asyncpg.Connection | None = None

    def __enter__(self) -> _BuildLock:
        wait_s, pool = self._cache._lock_wait_s, self._cache._pool
        try:
            self._conn = self._cache._run(
                self._take(wait_s), wait_s + _GRACE_S, lambda conn: _discard(pool, conn)
            )
        except asyncpg.LockNotAvailableError:
            raise EngineBuildBusy(
                f"another replica has held the build lock of engine {self._key.text} for "
                f"over {wait_s:g}s (building it, or stuck); not waiting longer"
            ) from None
        return self

    def __exit__(self, *_: object) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            self._cache._run(self._release(conn), _GRACE_S)
        except Exception as exc:  # _release closed the session: Postgres dropped the lock
            _log.warning("releasing the build lock of %s failed: %s", self._key.text, exc)

    async def _take(self, wait_s: float) -> asyncpg.Connection:
        pool = self._cache._pool
        lock_timeout = f"{max(1, round(wait_s * 1000))}ms"  # 0 would mean no limit
        conn = await pool.acquire(timeout=_GRACE_S / 3)
        try:
            # The wait ends inside Postgres (lock_timeout, SQLSTATE 55P03), where it
            # cannot race the grant; the session lock outlives the transaction.
            async with conn.transaction():
                await conn.execute("SELECT set_config('lock_timeout', $1, true)", lock_timeout)
                await conn.execute(
                    "SELECT pg_advisory_lock($1)", self._id, timeout=wait_s + _GRACE_S / 3
                )
        except BaseException:  # cancellation included (the build thread gave up)
            await _discard(pool, conn)
            raise
        return conn

    async def _release(self, conn: asyncpg.Connection) -> None:
        pool = self._cache._pool
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", self._id, timeout=_GRACE_S / 3)
        except BaseException:
            await _discard(pool, conn)
            raise
        await pool.release(conn)


async def _deliver(
    coroutine: Awaitable[T],
    outcome: concurrent.futures.Future[T],
    discard: Callable[[T], Awaitable[None]] | None,
) -> None:
    """Run ``coroutine`` and hand its outcome to the waiting thread, unless that thread
    gave up first: ``set_running_or_notify_cancel`` and the thread's ``cancel`` are
    atomic, so a result is either taken by the thread or discarded here, never lost."""
    try:
        result = await coroutine
    except BaseException as exc:
        if outcome.set_running_or_notify_cancel():
            outcome.set_exception(exc)
        raise
    if outcome.set_running_or_notify_cancel():
        outcome.set_result(result)
    elif discard is not None:
        await discard(result)


async def _discard(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Close a build lock's session and give its slot back to the pool. The lock may be
    held even when the statement failed (a cancel or a client timeout can cross the
    grant), and closing the session is the one sure way to drop it."""
    conn.terminate()
    await pool.release(conn)
