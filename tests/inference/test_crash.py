"""What an inference process keeps when it dies: its own OS process under Predict load,
on the real registry, feature store, Postgres and NATS.

Prediction logs are written off the response path, in batches every
``flush_interval_s`` (0.2 s), so a SIGKILL can lose the decisions of its last moments and
nothing older; SIGTERM writes every buffered log before the process exits. Each batch is
one transaction (events and a policy's decision rows together), so a kill mid-write
leaves no half batch and no log twice. After a restart the deployment serves again from what was
recorded, and logging goes on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import grpc
import pytest

from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    register,
    row,
    serving_version,
    set_alias,
)
from tests.support.subprocesses import sigkill, sigterm, start_worker

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

_FLUSH_BOUND_S = 1.5
"""A decision answered this long before a SIGKILL must be logged: the 0.2 s flush
interval plus a write on a busy 2-core machine."""


@asynccontextmanager
async def _inference_process(
    settings: LatheSettings, model: str, log: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, InferenceStub]]:
    env = {
        "LATHE_DATABASE_URL": str(settings.database_url),
        "LATHE_NATS_URL": str(settings.nats_url),
        "LATHE_NAMESPACE": settings.namespace,
        "LATHE_HOME": str(settings.home),
        **{f"LATHE_{name.value.upper()}_ADDR": settings.service_addr(name) for name in ServiceName},
        "LATHE_INFERENCE_MODELS": model,
        "LATHE_INFERENCE_LOG_SAMPLE_RATE": "1",
        "LATHE_INFERENCE_GPU_PROBE": "false",
        "LATHE_INFERENCE_POLL_INTERVAL_S": "0.05",
        "LATHE_SHUTDOWN_GRACE_S": "1",
    }
    process = await start_worker("services.inference", log_path=log, env=env)
    try:
        async with grpc.aio.insecure_channel(settings.service_addr(ServiceName.INFERENCE)) as ch:
            yield process, InferenceStub(ch)
    finally:
        await sigkill(process)


@asynccontextmanager
async def _under_load(
    inference: InferenceStub, model: str, answered: dict[str, float]
) -> AsyncIterator[None]:
    """Four clients calling Predict while the block runs (``_load``)."""
    stop = asyncio.Event()
    clients = [asyncio.create_task(_load(inference, model, answered, stop)) for _ in range(4)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*clients)


async def _load(
    inference: InferenceStub, model: str, answered: dict[str, float], stop: asyncio.Event
) -> None:
    """Two-row Predicts with decision ids of the test's own until ``stop``; each id answered
    goes into ``answered`` with the time of its answer."""
    k = 0
    while not stop.is_set():
        ids = [str(uuid.uuid4()) for _ in range(2)]
        rows = [row(f"L{(k + i) % 200:05d}", decision_id=d) for i, d in enumerate(ids)]
        k += 2
        try:
            await inference.Predict(rr.PredictRequest(model_name=model, rows=rows), timeout=2)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.01)
            continue
        now = time.monotonic()
        for d in ids:
            answered[d] = now


async def _logged(db_pool: asyncpg.Pool, ids: set[str]) -> list[str]:
    """Decision ids of the prediction logs recorded for ``ids`` (one entry per log)."""
    rows = await db_pool.fetch(
        "SELECT correlation_id FROM inference.events "
        "WHERE event_type = 'lathe.inference.v1.PredictionLogged' AND correlation_id = ANY($1)",
        list(ids),
    )
    return [r["correlation_id"] for r in rows]


async def test_a_killed_inference_loses_only_its_last_moments_and_sigterm_loses_nothing(
    registry: ModelRegistryStub,
    credit: Credit,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    name = f"crash-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    v1 = await register(registry, credit, name, export(credit, seed=1))
    await set_alias(registry, name, "production", v1)

    answered: dict[str, float] = {}
    async with _inference_process(test_settings, name, tmp_path / "first.log") as (
        process,
        inference,
    ):
        await eventually(
            lambda: _serves(inference, name, v1), timeout_s=60, what="v1 serves in the process"
        )
        async with _under_load(inference, name, answered):
            await asyncio.sleep(3.0)
            killed_at = time.monotonic()
            await sigkill(process)

    before_kill = {d for d, at in answered.items() if at < killed_at}
    settled = {d for d, at in answered.items() if at < killed_at - _FLUSH_BOUND_S}
    logged = await _logged(db_pool, before_kill)
    assert len(settled) > 100, "too little load to tell"
    assert len(logged) == len(set(logged)), "a log was written twice"
    assert settled <= set(logged), f"{len(settled - set(logged))} settled decisions lost"

    # Restarted, it serves the recorded deployment again; SIGTERM then writes every log.
    answered.clear()
    async with _inference_process(test_settings, name, tmp_path / "second.log") as (
        process,
        inference,
    ):
        await eventually(
            lambda: _serves(inference, name, v1), timeout_s=60, what="v1 serves after restart"
        )
        async with _under_load(inference, name, answered):
            await asyncio.sleep(1.0)
        assert await sigterm(process, timeout_s=30) == 0

    logged = await _logged(db_pool, set(answered))
    assert answered and set(logged) == set(answered)
    assert len(logged) == len(answered)


async def _serves(inference: InferenceStub, name: str, version: int) -> bool:
    return await serving_version(inference, name) == version
