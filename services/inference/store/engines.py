"""Compiled engines kept in the model registry, found by key.

An engine (a TensorRT plan, an AOTInductor package) is stored as a version of the
registry model ``inference.engines``: its one artifact is the serialized engine and its
tags are the ``EngineKey`` (ONNX digest, runtime version, compute capability, precision,
batch profile). A replica that needs an engine looks for a version whose tags match the
key exactly and builds only when there is none; a build is serialised across replicas
by a Postgres advisory lock on the key, so no two replicas build the same engine. An
engine whose tags differ in any component is never loaded.

Build threads call ``get``/``put`` synchronously; the registry calls run on the
service's event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import asyncpg
import grpc

from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from services.inference.runtimes.keys import EngineKey
from services.inference.store.registry import RegistryGateway

_log = logging.getLogger(__name__)
ENGINE_MODEL = "inference.engines"
ENGINE_FILE = "engine.bin"
_TIMEOUT_S = 600.0


class RegistryEngineCache:
    def __init__(
        self, registry: RegistryGateway, pool: asyncpg.Pool, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._loop = loop

    def get(self, key: EngineKey) -> bytes | None:
        return self._run(self._get(key))  # type: ignore[no-any-return]

    def put(self, key: EngineKey, engine: bytes) -> None:
        self._run(self._put(key, engine))

    def lock(self, key: EngineKey) -> _BuildLock:
        """Held while building ``key``: other replicas wait, then find it stored."""
        return _BuildLock(self, key)

    def _run(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_TIMEOUT_S)

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
        self._id = int.from_bytes(
            hashlib.sha256(key.text.encode()).digest()[:8], "big", signed=True
        )
        self._conn: asyncpg.Connection | None = None

    def __enter__(self) -> _BuildLock:
        async def take() -> asyncpg.Connection:
            conn = await self._cache._pool.acquire()
            await conn.execute("SELECT pg_advisory_lock($1)", self._id)
            return conn

        self._conn = self._cache._run(take())
        return self

    def __exit__(self, *_: object) -> None:
        async def release(conn: asyncpg.Connection) -> None:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", self._id)
            finally:
                await self._cache._pool.release(conn)

        if self._conn is not None:
            self._cache._run(release(self._conn))
