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
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import BenchContext, LatencyStats, latency_histogram
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


@dataclass(frozen=True)
class Interleaved:
    """Call latencies (ns) per variant, from ``interleaved``."""

    steady: dict[str, list[int]]
    """Every call but the first of each chunk: the variant running on its own."""
    switch_in: dict[str, list[int]]
    """The first call of each chunk, made just after other variants ran: their work has
    left the CPU caches cold for this variant's processes (~1 ms more for a gRPC service
    here). Kept apart so that a p99 over chunks of 100 calls measures the variant, not
    the 1% of calls that follow a switch, and reported as its own number."""


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[object]]], *, samples: int, warmup: int, chunk: int
) -> Interleaved:
    """Per variant, ``samples`` steady call latencies, alternating variants every ``chunk``
    calls (so slow drifts of a shared machine reach every variant alike), each chunk led
    by one switch-in call."""
    for call in calls.values():
        for _ in range(warmup):
            await call()
    steady: dict[str, list[int]] = {key: [] for key in calls}
    switch_in: dict[str, list[int]] = {key: [] for key in calls}
    while any(len(v) < samples for v in steady.values()):
        for key, call in calls.items():
            wanted = min(chunk, samples - len(steady[key]))
            if wanted == 0:
                continue
            for position in range(wanted + 1):
                started = time.perf_counter_ns()
                await call()
                elapsed = time.perf_counter_ns() - started
                (switch_in if position == 0 else steady)[key].append(elapsed)
    return Interleaved(steady, switch_in)


def measurement(key: str, label: str, role: Role, samples: list[int]) -> Measurement:
    stats = LatencyStats.from_ns(samples)
    return Measurement(
        key,
        label,
        role,
        stats.metrics(),
        {"latency_ms": asdict(stats), "latency_histogram": latency_histogram(samples)},
    )
