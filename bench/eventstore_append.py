"""Appending to the event store vs inserting the same rows with raw asyncpg.

Compares ``EventStore.append`` (one ``INSERT ... SELECT FROM unnest(...)`` per call,
plus the streams-row version check, the NOTIFY trigger and building the returned
``RecordedEvent``s) with the fastest plain way to put the same rows in Postgres:
asyncpg's ``executemany`` into a table with the same columns, keys and indexes.

Four measurements: batched throughput with one writer and with several
concurrent writers; single-event append latency against a one-row INSERT; and
single-event commit capacity with many concurrent writers. Diagnostic variants
say where Lathe's extra time goes: Lathe's own append SQL issued straight
through asyncpg ("the statement" vs "the Python around it"), and, for single
events, a plain INSERT into a table carrying Lathe's NOTIFY trigger ("the
wake-up signal"). Variants alternate in rounds so drift in a noisy machine's
speed is shared fairly rather than charged to whichever ran last.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

import asyncpg

from bench.events import RAW_COLUMNS, RAW_TABLE_DDL, new_event, raw_row
from bench.families import Family
from bench.goals import Compare, GoalSpec
from bench.harness import BenchContext, GcPauses, LatencyStats, watch_gc
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role, Value
from libs.db import quote_ident
from libs.eventstore import NO_STREAM, NewEvent


@dataclass(frozen=True)
class AppendParams:
    total_events: int = 100_000
    """Events timed per variant in each throughput measurement."""
    batch_size: int = 500
    streams: int = 10
    """Streams the batches are spread over (round robin)."""
    rounds: int = 4
    """Throughput is measured in this many alternating slices per variant."""
    warmup_batches: int = 10
    concurrent_writers: int = 4
    """Writers of the concurrent throughput measurement; 0 skips it."""
    latency_samples: int = 2_000
    latency_warmup: int = 200
    latency_chunk: int = 100
    """Single-event appends run in interleaved chunks of this many per variant."""
    capacity_writers: int = 16
    """Concurrent single-event writers of the capacity measurement; 0 skips it."""
    capacity_appends_per_writer: int = 500
    capacity_warmup_per_writer: int = 20
    min_payload_bytes: int = 100
    max_payload_bytes: int = 200
    seed: int = 7


@dataclass(frozen=True)
class Batch:
    """One append call's worth of work, in every variant's own input shape."""

    stream_id: str
    base_version: int
    """The stream's version before this batch (``NO_STREAM`` for a new stream)."""
    events: Sequence[NewEvent]
    rows: list[tuple[object, ...]]
    """The baseline's executemany rows, built before timing."""
    columns: tuple[list[object], ...]
    """The append statement's array parameters, built before timing (diagnostic)."""


def _plan(events: Sequence[NewEvent], size: int, writers: int, streams: int) -> list[list[Batch]]:
    """Split ``events`` into batches, each writer owning its own streams."""
    per_writer: list[list[Batch]] = [[] for _ in range(writers)]
    streams_per_writer = max(1, streams // writers)
    versions: dict[str, int] = {}
    for index, start in enumerate(range(0, len(events), size)):
        chunk = events[start : start + size]
        writer = index % writers
        stream_id = f"w{writer}-s{(index // writers) % streams_per_writer}"
        base = versions.get(stream_id, NO_STREAM)
        versions[stream_id] = base + len(chunk)
        rows = [raw_row(stream_id, base + i + 1, e) for i, e in enumerate(chunk)]
        per_writer[writer].append(Batch(stream_id, base, chunk, rows, _columns(chunk)))
    return per_writer


def _continue(warmup: list[list[Batch]], timed: list[list[Batch]]) -> list[list[Batch]]:
    """Shift timed batches' versions past what the warm-up wrote to the same streams."""
    written: dict[str, int] = {}
    for batches in warmup:
        for batch in batches:
            written[batch.stream_id] = batch.base_version + len(batch.events)
    return [[_shift(b, written.get(b.stream_id, 0)) for b in batches] for batches in timed]


def _shift(batch: Batch, offset: int) -> Batch:
    if offset == 0:
        return batch
    base = batch.base_version + offset
    rows = [raw_row(batch.stream_id, base + i + 1, e) for i, e in enumerate(batch.events)]
    return Batch(batch.stream_id, base, batch.events, rows, batch.columns)


def _slice(work: list[list[Batch]], index: int, count: int) -> list[list[Batch]]:
    """Round ``index`` of ``count``: the same contiguous share of every writer's batches."""
    out = []
    for batches in work:
        size = -(-len(batches) // count)
        out.append(batches[index * size : (index + 1) * size])
    return out


def _rotate(variants: list[Variant], by: int) -> list[Variant]:
    by %= len(variants)
    return variants[by:] + variants[:by]


def _columns(events: Sequence[NewEvent]) -> tuple[list[object], ...]:
    """The append statement's parameters $4..$12, in the order store.py binds them."""
    return (
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.schema_version for e in events],
        [e.payload for e in events],
        [e.subject_tail for e in events],
        [e.metadata.correlation_id for e in events],
        [e.metadata.causation_id for e in events],
        [e.metadata.actor for e in events],
        [e.metadata.traceparent for e in events],
    )


@dataclass
class Variant:
    """One way of appending, with what it measured so far."""

    key: str
    label: str
    role: Role
    append: Callable[[Batch], Awaitable[None]]
    elapsed_ns: int = 0
    events: int = 0
    round_rates: list[float] = field(default_factory=list)
    call_ns: list[int] = field(default_factory=list)
    """Duration of every timed append call."""
    gc: GcPauses = field(default_factory=GcPauses)

    @property
    def throughput(self) -> float:
        return self.events / (self.elapsed_ns / 1e9)


_NOTIFY_TRIGGER = """
    CREATE FUNCTION {schema}.notify_appended() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('lathe_events.' || TG_TABLE_SCHEMA, '');
        RETURN NULL;
    END $$;
    CREATE TRIGGER appended AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.notify_appended()"""
"""The event store's wake-up trigger (migration 0001), for the NOTIFY probe."""


async def _raw_table(context: BenchContext, pool: asyncpg.Pool, *, notify: bool) -> str:
    schema = quote_ident(context.schema("raw_notify" if notify else "raw"))
    table = f"{schema}.events"
    async with pool.acquire() as conn:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(RAW_TABLE_DDL.format(table=table))
        if notify:
            await conn.execute(_NOTIFY_TRIGGER.format(schema=schema, table=table))
    return table


async def _variants(
    context: BenchContext, pool: asyncpg.Pool, *, notify_probe: bool
) -> list[Variant]:
    """Fresh, empty tables for each variant, so none inherits another's bloat."""
    lathe = await context.event_store(pool, "lathe")
    probe = await context.event_store(pool, "lathe_sql")

    def raw_insert(table: str) -> Callable[[Batch], Awaitable[None]]:
        placeholders = ", ".join(f"${i}" for i in range(1, 12))
        insert = f"INSERT INTO {table} ({RAW_COLUMNS}) VALUES ({placeholders})"

        async def raw(batch: Batch) -> None:
            async with pool.acquire() as conn:
                if len(batch.rows) == 1:
                    await conn.execute(insert, *batch.rows[0])
                else:
                    await conn.executemany(insert, batch.rows)

        return raw

    async def library(batch: Batch) -> None:
        await lathe.append(batch.stream_id, batch.events, expected_version=batch.base_version)

    async def statement(batch: Batch) -> None:
        sql = probe.sql.append_no_stream if batch.base_version == 0 else probe.sql.append_expected
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                sql, batch.stream_id, batch.base_version, len(batch.events), *batch.columns
            )
        assert len(rows) == len(batch.events), "diagnostic append was rejected"

    raw_table = await _raw_table(context, pool, notify=False)
    variants = [
        Variant(
            "raw_insert", "raw asyncpg INSERT, plain table", Role.BASELINE, raw_insert(raw_table)
        ),
        Variant("lathe_append", "Lathe EventStore.append", Role.LATHE, library),
        Variant("lathe_sql", "Lathe's append SQL via raw asyncpg", Role.DIAGNOSTIC, statement),
    ]
    if notify_probe:
        notify_table = await _raw_table(context, pool, notify=True)
        variants.append(
            Variant(
                "raw_insert_notify",
                "raw INSERT, plain table + Lathe's NOTIFY trigger",
                Role.DIAGNOSTIC,
                raw_insert(notify_table),
            )
        )
    return variants


async def _run_writers(variant: Variant, work: list[list[Batch]], *, timed: bool) -> None:
    async def writer(batches: list[Batch]) -> None:
        for batch in batches:
            started = time.perf_counter_ns()
            await variant.append(batch)
            if timed:
                variant.call_ns.append(time.perf_counter_ns() - started)

    await asyncio.gather(*(writer(batches) for batches in work))


async def _measure(
    context: BenchContext,
    events: Sequence[NewEvent],
    *,
    batch_size: int,
    writers: int,
    streams: int,
    warmup_calls: int,
    rounds: int,
    notify_probe: bool = False,
) -> list[Variant]:
    """Append ``events`` with every variant: warm-up, then alternating timed rounds.

    Each of ``writers`` concurrent writers appends ``batch_size`` events per call to
    streams of its own, closed loop (next call when the last returns).
    """
    async with context.pool(max_size=writers + 2) as pool:
        variants = await _variants(context, pool, notify_probe=notify_probe)
        warm = min(len(events) // 2, warmup_calls * batch_size)
        warmup = _plan(events[:warm], batch_size, writers, streams)
        timed = _continue(warmup, _plan(events[warm:], batch_size, writers, streams))
        for variant in variants:
            await _run_writers(variant, warmup, timed=False)
        for round_index in range(rounds):
            work = _slice(timed, round_index, rounds)
            count = sum(len(b.events) for batches in work for b in batches)
            for variant in _rotate(variants, round_index):
                with watch_gc() as pauses:
                    started = time.perf_counter_ns()
                    await _run_writers(variant, work, timed=True)
                    elapsed = time.perf_counter_ns() - started
                variant.gc.pauses_ms.extend(pauses.pauses_ms)
                variant.elapsed_ns += elapsed
                variant.events += count
                variant.round_rates.append(count / (elapsed / 1e9))
    return variants


def _details(variant: Variant) -> dict[str, object]:
    return {
        "events": variant.events,
        "elapsed_s": variant.elapsed_ns / 1e9,
        "round_rates": variant.round_rates,
        "call_latency_ms": asdict(LatencyStats.from_ns(variant.call_ns)),
        "gc": variant.gc.summary(),
    }


def _throughput_metrics(variant: Variant) -> dict[str, Value]:
    return {
        "throughput": Value(variant.throughput, "events/s"),
        "slowest_round": Value(min(variant.round_rates), "events/s"),
        "fastest_round": Value(max(variant.round_rates), "events/s"),
    }


async def _batched(
    context: BenchContext, params: AppendParams, events: Sequence[NewEvent], writers: int
) -> Comparison:
    """Events/s appending ``batch_size`` events per call with ``writers`` concurrent writers."""
    warm = params.warmup_batches * params.batch_size
    variants = await _measure(
        context,
        events[: warm + params.total_events],
        batch_size=params.batch_size,
        writers=writers,
        streams=params.streams,
        warmup_calls=params.warmup_batches,
        rounds=params.rounds,
    )
    measurements = [
        Measurement(
            v.key,
            f"{v.label} (executemany)" if v.role is Role.BASELINE else v.label,
            v.role,
            _throughput_metrics(v),
            _details(v),
        )
        for v in variants
    ]
    writer_text = "1 writer" if writers == 1 else f"{writers} concurrent writers"
    return Comparison(
        key=f"batched_append_{writers}w",
        title=f"Batched append, {params.batch_size} events per call, {writer_text}",
        headline="throughput",
        higher_is_better=True,
        columns=["throughput", "slowest_round", "fastest_round"],
        variants=measurements,
        notes=[
            f"{params.total_events} events per variant in {params.rounds} alternating rounds, "
            f"after {params.warmup_batches} warm-up calls; one transaction per call."
        ],
    )


async def _single_latency(
    context: BenchContext, params: AppendParams, events: Sequence[NewEvent]
) -> Comparison:
    """Latency of appending one event per call, one call at a time (no queueing)."""
    variants = await _measure(
        context,
        events[: params.latency_warmup + params.latency_samples],
        batch_size=1,
        writers=1,
        streams=params.streams,
        warmup_calls=params.latency_warmup,
        rounds=max(1, params.latency_samples // params.latency_chunk),
        notify_probe=True,
    )
    measurements = []
    for v in variants:
        stats = LatencyStats.from_ns(v.call_ns)
        label = f"{v.label} (one row)" if v.role is Role.BASELINE else v.label
        measurements.append(Measurement(v.key, label, v.role, stats.metrics(), _details(v)))
    return Comparison(
        key="single_event_append",
        title="Single-event append latency (one event per call, one call at a time)",
        headline="p50",
        higher_is_better=False,
        columns=["p50", "p90", "p99", "max", "mean"],
        variants=measurements,
        notes=[
            f"{params.latency_samples} appends per variant over {params.streams} streams, "
            f"interleaved in chunks of {params.latency_chunk}; each is its own transaction."
        ],
    )


async def _single_capacity(
    context: BenchContext, params: AppendParams, events: Sequence[NewEvent]
) -> Comparison:
    """Commits/s with many concurrent single-event appends: where NOTIFY's lock shows."""
    writers = params.capacity_writers
    per_writer = params.capacity_appends_per_writer
    variants = await _measure(
        context,
        events[: writers * (per_writer + params.capacity_warmup_per_writer)],
        batch_size=1,
        writers=writers,
        streams=writers,
        warmup_calls=writers * params.capacity_warmup_per_writer,
        rounds=params.rounds,
        notify_probe=True,
    )
    measurements = []
    for v in variants:
        stats = LatencyStats.from_ns(v.call_ns)
        metrics = {
            "throughput": Value(v.throughput, "events/s"),
            "call_p50": Value(stats.p50, "ms"),
            "call_p99": Value(stats.p99, "ms"),
        }
        label = f"{v.label} (one row)" if v.role is Role.BASELINE else v.label
        measurements.append(Measurement(v.key, label, v.role, metrics, _details(v)))
    return Comparison(
        key=f"single_event_capacity_{writers}w",
        title=f"Single-event append capacity, {writers} concurrent writers (one event per call)",
        headline="throughput",
        higher_is_better=True,
        columns=["throughput", "call_p50", "call_p99"],
        variants=measurements,
        notes=[
            f"{writers * per_writer} appends per variant in {params.rounds} alternating rounds; "
            "every append is a commit. A transaction that NOTIFYs holds a cluster-wide lock "
            "from pre-commit until its commit record is flushed, so such commits cannot share "
            "a WAL flush (group commit): compare the NOTIFY probe with the plain INSERT."
        ],
    )


async def run(context: BenchContext, params: AppendParams) -> FamilyResult:
    rng = random.Random(params.seed)
    needed = max(
        params.total_events + params.warmup_batches * params.batch_size,
        params.latency_warmup + params.latency_samples,
        params.capacity_writers
        * (params.capacity_appends_per_writer + params.capacity_warmup_per_writer),
    )
    events = [
        new_event(
            rng, min_bytes=params.min_payload_bytes, max_bytes=params.max_payload_bytes, traced=True
        )
        for _ in range(needed)
    ]
    comparisons = [await _batched(context, params, events, writers=1)]
    if params.concurrent_writers > 1:
        comparisons.append(await _batched(context, params, events, params.concurrent_writers))
    comparisons.append(await _single_latency(context, params, events))
    if params.capacity_writers > 0:
        comparisons.append(await _single_capacity(context, params, events))
    batched = comparisons[0]
    lathe = batched.variant("lathe_append")
    ratio = batched.ratio(lathe) or 0.0
    goals = [
        Goal(
            "Batched EventStore.append reaches >= 50% of raw asyncpg executemany throughput",
            measured=round(ratio * 100, 1),
            target=50.0,
            unit="% of baseline",
            comparator=">=",
        ),
        Goal(
            "Batched EventStore.append sustains >= 20,000 events/s on this machine",
            measured=round(lathe.metric("throughput")),
            target=20_000,
            unit="events/s",
            comparator=">=",
        ),
    ]
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=comparisons,
        goals=goals,
    )


GOALS = (
    GoalSpec(
        issue=None,
        description="Batched EventStore.append (1 writer) events/s vs asyncpg executemany",
        figure="batched_append_1w/lathe_append/throughput",
        baseline=("batched_append_1w/raw_insert/throughput",),
        comparator=">=",
        threshold=0.5,
    ),
    GoalSpec(
        issue=None,
        description="Batched EventStore.append (1 writer) events/s on this machine",
        figure="batched_append_1w/lathe_append/throughput",
        baseline=("batched_append_1w/raw_insert/throughput",),
        compare=Compare.VALUE,
        comparator=">=",
        threshold=20_000,
        unit="events/s",
    ),
    GoalSpec(
        issue=None,
        description="Single-event append p50 vs a one-row asyncpg INSERT",
        figure="single_event_append/lathe_append/p50",
        baseline=("single_event_append/raw_insert/p50",),
    ),
)

FAMILY = Family(
    name="eventstore.append",
    summary="EventStore.append vs raw asyncpg inserts of the same rows",
    params=AppendParams,
    run=run,
    quick={
        "total_events": 10_000,
        "rounds": 2,
        "warmup_batches": 2,
        "latency_samples": 300,
        "latency_warmup": 50,
        "capacity_appends_per_writer": 100,
    },
    goals=GOALS,
)
