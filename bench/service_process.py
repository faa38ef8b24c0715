"""Running a Lathe service (or a raw echo server) as its own process for a benchmark,
and timing calls to it side by side with their baselines."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from bench.harness import BenchContext, LatencyStats
from bench.results import Measurement, Role
from libs.platform.health import health_status

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_env(**values: str) -> dict[str, str]:
    """This process's environment without Lathe/OTel settings, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATHE_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")])
    env.update(values)
    return env


def run_env(context: BenchContext, home: str, **values: str) -> dict[str, str]:
    """``service_env`` pointed at this run's database, NATS namespace and ``home``."""
    return service_env(
        LATHE_DATABASE_URL=context.database_url,
        LATHE_NATS_URL=context.nats_url,
        LATHE_NAMESPACE=context.namespace,
        LATHE_HOME=home,
        **values,
    )


@asynccontextmanager
async def process(args: list[str], env: dict[str, str], log: Path) -> AsyncIterator[int]:
    """``python <args>`` running until the block ends; yields its pid."""
    with log.open("wb") as out:
        started = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, cwd=REPO_ROOT, stdout=out, stderr=out
        )
    try:
        yield started.pid
    finally:
        if started.returncode is None:
            started.terminate()
        await started.wait()


async def wait_serving(address: str, *, what: str = "the service") -> None:
    for _ in range(600):
        if await health_status(address) == "SERVING":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} at {address} never reached SERVING")


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[object]]], *, samples: int, warmup: int, chunk: int
) -> dict[str, list[int]]:
    """Per variant, ``samples`` call latencies (ns), alternating variants every ``chunk``."""
    for call in calls.values():
        for _ in range(warmup):
            await call()
    latencies: dict[str, list[int]] = {key: [] for key in calls}
    while any(len(v) < samples for v in latencies.values()):
        for key, call in calls.items():
            for _ in range(min(chunk, samples - len(latencies[key]))):
                started = time.perf_counter_ns()
                await call()
                latencies[key].append(time.perf_counter_ns() - started)
    return latencies


def measurement(key: str, label: str, role: Role, samples: list[int]) -> Measurement:
    stats = LatencyStats.from_ns(samples)
    return Measurement(key, label, role, stats.metrics(), {"latency_ms": asdict(stats)})
