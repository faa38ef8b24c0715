"""Shared by the issue-10 hardening tests: the public API only (stubs, SDK, raw gRPC).

Nothing here imports ``services.feature_store``: these tests describe what a caller
sees, so they keep working while the service's insides are rearranged. A second
feature-store *process* is started the way an operator would (``python -m
services.feature_store`` with ``LATHE_*`` settings), never by importing it.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlparse

import asyncpg
import grpc
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings
from tests.conftest import free_port
from tests.support.infra import InfraEndpoints

REPO_ROOT = Path(__file__).resolve().parents[2]
CALLER_MISTAKE_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
NEVER = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
"""Codes a request must never get for something the caller did."""


def arrow_ipc(table: pa.Table, *, max_chunksize: int | None = None) -> bytes:
    """``table`` as an Arrow IPC stream (``max_chunksize`` rows per record batch)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max_chunksize)
    return sink.getvalue().to_pybytes()


async def training_set(
    stub: FeatureStoreStub, request: rr.GetHistoricalFeaturesRequest
) -> tuple[rr.DatasetSnapshot, pa.Table]:
    """The snapshot message and the Arrow table of one GetHistoricalFeatures call."""
    snapshot, parts = None, []
    async for response in stub.GetHistoricalFeatures(request):
        if response.HasField("snapshot"):
            snapshot = response.snapshot
        else:
            parts.append(response.arrow_ipc)
    assert snapshot is not None, "no DatasetSnapshot message came first"
    return snapshot, pa.ipc.open_stream(b"".join(parts)).read_all()


async def materialize(
    stub: FeatureStoreStub, request: rr.MaterializeRequest
) -> list[rr.MaterializeProgress]:
    return [response.progress async for response in stub.Materialize(request)]


async def outcome(call: Awaitable[object]) -> grpc.aio.AioRpcError | None:
    """The error ``call`` ended with, or None when it succeeded."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


def assert_caller_mistake(
    error: grpc.aio.AioRpcError | None,
    names: str | tuple[str, ...],
    *,
    codes: frozenset[grpc.StatusCode] = CALLER_MISTAKE_CODES,
    allow_ok: bool = False,
) -> None:
    """``error`` is one of ``codes`` and its message names the field (any of ``names``).

    With ``allow_ok`` a success passes too (the caller then checks what was answered).
    """
    if error is None:
        assert allow_ok, "the request was accepted; it should have been refused"
        return
    assert error.code() not in NEVER, (
        f"{error.code().name} for a caller's mistake: {error.details()}"
    )
    assert error.code() in codes, f"{error.code().name}: {error.details()}"
    candidates = (names,) if isinstance(names, str) else names
    details = error.details() or ""
    assert any(name.lower() in details.lower() for name in candidates), (
        f"the message does not name {' or '.join(map(repr, candidates))}: {details!r}"
    )


def same_value(left: object, right: object) -> bool:
    """Exact equality that also holds for NaN == NaN and tells 0.0 from -0.0."""
    if isinstance(left, float) and isinstance(right, float):
        if math.isnan(left) or math.isnan(right):
            return math.isnan(left) and math.isnan(right)
        return left == right and math.copysign(1.0, left) == math.copysign(1.0, right)
    return type(left) is type(right) and left == right


@asynccontextmanager
async def feature_store_process(
    settings: LatheSettings, home: Path, log_path: Path, **extra_env: str
) -> AsyncIterator[FeatureStoreStub]:
    """A separate feature-store OS process on the same database, NATS and namespace,
    with its own ``LATHE_HOME`` (so its own offline mirror) and any other ``LATHE_*``
    settings in ``extra_env``; a stub to it while it runs."""
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")]),
        "LATHE_DATABASE_URL": settings.require_database_url(),
        "LATHE_NATS_URL": settings.require_nats_url(),
        "LATHE_NAMESPACE": settings.namespace,
        "LATHE_HOME": str(home),
        "LATHE_FEATURE_STORE_ADDR": address,
        "LATHE_SHUTDOWN_GRACE_S": "1",
        **extra_env,
    }
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.feature_store",
            stdout=log,
            stderr=log,
            env=env,
            cwd=REPO_ROOT,
        )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            await _wait_serving(channel, process, log_path)
            yield FeatureStoreStub(channel)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _wait_serving(
    channel: grpc.aio.Channel, process: asyncio.subprocess.Process, log_path: Path
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"the feature-store process exited; see {log_path}")
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the feature-store process never reached SERVING: {log_path}")


@asynccontextmanager
async def private_feature_store(
    infra: InfraEndpoints, settings: LatheSettings, scratch: Path
) -> AsyncIterator[FeatureStoreStub]:
    """A feature-store process on a database and namespace of its own (dropped after), for
    data that would break every later test sharing the run's database (e.g. an online row
    every replica load trips over)."""
    run = f"{infra.run_id}x{uuid.uuid4().hex[:6]}"
    name = f"lathe_test_{run}"
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    private = settings.model_copy(
        update={
            "database_url": urlparse(infra.admin_database_url)._replace(path=f"/{name}").geturl(),
            "namespace": f"{infra.namespace}x{run[-6:]}",  # cleaned up with the run's streams
        }
    )
    try:
        async with feature_store_process(
            private, scratch / "home", scratch / "private.log"
        ) as stub:
            yield stub
    finally:
        admin = await asyncpg.connect(infra.admin_database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
