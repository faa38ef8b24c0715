"""End-to-end lag: from just before an append to a downstream consumer's receipt.

Lathe's path: ``EventStore.append`` (one event per call) commits to Postgres; the
``EventRelay``, running in the same process and event loop as the appends, as
``ServiceHost`` runs it, wakes on the append's in-process signal, tails the log and publishes to
JetStream; a downstream process receives the event through Lathe's
``DurableConsumer`` (exactly-once: each event's processed_events row commits in
the same transaction as the handler's effect, before the ack) and, for
comparison, through a plain nats-py pull consumer on the same stream.

Baseline: the raw building block, ``js.publish`` to a plain stream of the same
configuration, consumed by the same plain pull consumer, at the same rate.

Load is offered open loop at a fixed rate (each call starts on schedule whether
or not earlier ones finished), so a stall is charged to the latencies it causes.
The first ``warmup_s`` seconds are sent but not counted.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from bench.events import SUBJECT_TAIL, new_event
from bench.families import Family
from bench.goals import Compare, GoalSpec
from bench.harness import (
    BenchContext,
    GcPauses,
    LatencyStats,
    PacingReport,
    busy_percent,
    cpu_ticks,
    frozen_heap,
    open_loop,
    watch_gc,
)
from bench.lag_consumer import ConsumerPlan, Receipts, running_consumers
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role, Value
from bench.service_process import measurement
from libs.config import LatheSettings
from libs.eventstore import ANY_VERSION, EventRelay, NewEvent, RecordedEvent
from libs.eventstore.headers import MSG_ID
from libs.messaging import ensure_stream

_SETTINGS = LatheSettings.model_fields


@dataclass(frozen=True)
class LagParams:
    rate: float = 1000.0
    """Events (appends or publishes) per second, one event each."""
    duration_s: float = 15.0
    """Measured seconds per path, after the warm-up."""
    warmup_s: float = 2.0
    streams: int = 64
    """Event streams the appends rotate over (ANY_VERSION, no version conflicts)."""
    consumer_process: bool = True
    """Consume in a separate process, as a downstream service would; False: same loop."""
    drain_timeout_s: float = 30.0
    """How long after the last send to wait for stragglers before counting them missing."""
    fetch_batch: int = 64
    """The plain pull consumer's fetch size (DurableConsumer's default is also 64)."""
    relay_batch_size: int = _SETTINGS["relay_batch_size"].default
    relay_poll_interval_s: float = _SETTINGS["relay_poll_interval_s"].default
    duplicate_window_s: float = _SETTINGS["duplicate_window_s"].default
    gc_freeze: bool = True
    """gc.freeze() after set-up in the producer and the consumer process, as ``ServiceHost``
    freezes a service's start-up heap (false: every collection scans the whole heap)."""
    relay_only_phase: bool = True
    """Also run the Lathe path with only the plain consumer, isolating the relay."""
    producer_pool_size: int = 20
    """ServiceHost's pool size."""
    acquire_timeout_s: float = 120.0
    """The producer pool's wait for a connection (services: 10 s)."""
    min_payload_bytes: int = 100
    max_payload_bytes: int = 200
    seed: int = 11


@dataclass
class Trace:
    """What the producer recorded for each message k."""

    ids: list[str]
    sent_ns: list[int]
    """monotonic ns just before the append/publish call."""
    returned_ns: list[int]
    """monotonic ns when the call returned (commit / JetStream ack)."""
    pacing: PacingReport | None = None
    gc: GcPauses = field(default_factory=GcPauses)
    cpu_cores: float = 0.0
    """Producer process CPU while pacing (appends, relay, NATS client), in cores."""
    machine_busy_pct: float = 0.0
    """The whole machine's CPU use while pacing (every process, ours and others')."""
    positions: list[int] = field(default_factory=list)
    """Lathe paths: the global position each append got."""
    relay: RelayTimes | None = None


class RelayTimes:
    """The relay's stage timestamps (``EventRelay.probe``): per batch and per ack."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int, int]] = []
        """(last position, loop woke, read returned, handed to the client), monotonic ns."""
        self._read: tuple[int, int, int] | None = None
        self.acks: list[tuple[int, int]] = []
        """(acknowledged position, when the ack was settled)."""

    def read(self, events: Sequence[RecordedEvent], woke_ns: int) -> None:
        self._read = (events[-1].global_position, woke_ns, time.monotonic_ns())

    def handed(self, events: Sequence[RecordedEvent]) -> None:
        assert self._read is not None
        self.batches.append((*self._read, time.monotonic_ns()))

    def acked(self, position: int) -> None:
        self.acks.append((position, time.monotonic_ns()))

    def of(self, position: int) -> tuple[int, int, int, int] | None:
        """(woke, read, handed, acked) for the event at ``position``."""
        i = bisect.bisect_left(self.batches, (position,))
        j = bisect.bisect_left(self.acks, (position,))
        if i == len(self.batches) or j == len(self.acks):
            return None
        _, woke, read, handed = self.batches[i]
        return woke, read, handed, self.acks[j][1]


@contextlib.contextmanager
def _cpu_meter(trace: Trace) -> Iterator[None]:
    cpu, wall, ticks = time.process_time(), time.monotonic(), cpu_ticks()
    try:
        yield
    finally:
        trace.cpu_cores = (time.process_time() - cpu) / max(time.monotonic() - wall, 1e-9)
        trace.machine_busy_pct = busy_percent(ticks, cpu_ticks())


async def _raw_path(context: BenchContext, params: LagParams) -> tuple[Trace, Receipts]:
    """js.publish -> plain stream -> plain pull consumer, at the same rate and sizes."""
    count, events = _events(params)
    names = context.stream_names("rawlag")
    async with context.nats(name="bench-raw-producer") as client:
        js = client.jetstream()
        await ensure_stream(
            js, names.stream, [names.all_subjects], duplicate_window_s=params.duplicate_window_s
        )
        subject = names.subject(SUBJECT_TAIL)
        plan = ConsumerPlan(
            nats_url=context.nats_url,
            stream=names.stream,
            filter_subject=names.all_subjects,
            expected=count,
            plain_durable="bench_plain",
            fetch_batch=params.fetch_batch,
            gc_freeze=params.gc_freeze,
        )
        trace = Trace([str(e.event_id) for e in events], [0] * count, [0] * count)

        async def publish(k: int) -> None:
            trace.sent_ns[k] = time.monotonic_ns()
            await js.publish(subject, events[k].payload, headers={MSG_ID: trace.ids[k]})
            trace.returned_ns[k] = time.monotonic_ns()

        async with running_consumers(plan, in_process=not params.consumer_process) as consumers:
            with frozen_heap(params.gc_freeze), _cpu_meter(trace), watch_gc() as trace.gc:
                trace.pacing = await open_loop(count, params.rate, publish)
            receipts = await consumers.finish(params.drain_timeout_s)
    return trace, receipts


async def _lathe_path(
    context: BenchContext, params: LagParams, *, durable: bool
) -> tuple[Trace, Receipts]:
    """EventStore.append -> EventRelay -> JetStream -> plain consumer (+ DurableConsumer)."""
    count, events = _events(params)
    names = context.stream_names("lagsvc" if durable else "lagsvc_plain")
    async with (
        context.pool(
            max_size=params.producer_pool_size,
            name="bench-lagsvc",
            # Open-loop load on a busy machine queues appends for the pool: show that as
            # lag, not as failed calls that abort the run.
            acquire_timeout_s=params.acquire_timeout_s,
        ) as pool,
        context.nats(name="bench-lagsvc") as client,
    ):
        js = client.jetstream()
        store = await context.event_store(pool, names.service)
        downstream = await context.event_store(pool, "downstream") if durable else None
        await ensure_stream(
            js, names.stream, [names.all_subjects], duplicate_window_s=params.duplicate_window_s
        )
        relay = EventRelay(
            store,
            js,
            names,
            batch_size=params.relay_batch_size,
            poll_interval_s=params.relay_poll_interval_s,
        )
        relay.probe = RelayTimes()
        stop_relay = asyncio.Event()
        relay_task = asyncio.create_task(relay.run(stop_relay))
        plan = ConsumerPlan(
            nats_url=context.nats_url,
            stream=names.stream,
            filter_subject=names.all_subjects,
            expected=count,
            plain_durable="bench_plain",
            lathe_durable="bench_durable" if durable else None,
            database_url=context.database_url,
            lathe_schema=downstream.schema if downstream else None,
            fetch_batch=params.fetch_batch,
            gc_freeze=params.gc_freeze,
        )
        trace = Trace([str(e.event_id) for e in events], [0] * count, [0] * count)
        trace.positions = [0] * count
        trace.relay = relay.probe

        async def append(k: int) -> None:
            stream_id = f"agg-{k % params.streams}"
            trace.sent_ns[k] = time.monotonic_ns()
            result = await store.append(stream_id, [events[k]], expected_version=ANY_VERSION)
            trace.returned_ns[k] = time.monotonic_ns()
            trace.positions[k] = result.events[0].global_position

        try:
            async with running_consumers(plan, in_process=not params.consumer_process) as consumers:
                with frozen_heap(params.gc_freeze), _cpu_meter(trace), watch_gc() as trace.gc:
                    trace.pacing = await open_loop(count, params.rate, append)
                receipts = await consumers.finish(params.drain_timeout_s)
        finally:
            stop_relay.set()
            await asyncio.wait_for(relay_task, 30)
    return trace, receipts


def _events(params: LagParams) -> tuple[int, list[NewEvent]]:
    count = round((params.warmup_s + params.duration_s) * params.rate)
    rng = random.Random(params.seed)
    return count, [
        new_event(
            rng,
            min_bytes=params.min_payload_bytes,
            max_bytes=params.max_payload_bytes,
            traced=False,
        )
        for _ in range(count)
    ]


def _delivery(
    key: str, label: str, role: Role, trace: Trace, received: Receipts, lathe: bool, measured: range
) -> Measurement:
    """Send -> receipt latency of the measured messages, and the rate they arrived at."""
    receipts = received.lathe if lathe else received.plain
    lags: list[int] = []
    last_receipt = 0
    for k in measured:
        at = receipts.get(trace.ids[k])
        if at is not None:
            lags.append(at - trace.sent_ns[k])
            last_receipt = max(last_receipt, at)
    stats = LatencyStats.from_ns(lags)
    span_s = (last_receipt - trace.sent_ns[measured.start]) / 1e9 if lags else 0.0
    missing = len(measured) - len(lags)
    metrics = stats.metrics()
    metrics["delivered_rate"] = Value(len(lags) / span_s if span_s > 0 else 0.0, "events/s")
    metrics["missing"] = Value(missing, "events")
    details = {
        "latency_ms": asdict(stats),
        "producer_cpu_cores": trace.cpu_cores,
        "consumer_process_cpu_cores": received.cpu_s / received.wall_s if received.wall_s else None,
    }
    return Measurement(key, label, role, metrics, details)


def _call_latency(key: str, label: str, role: Role, trace: Trace, measured: range) -> Measurement:
    stats = LatencyStats.from_ns([trace.returned_ns[k] - trace.sent_ns[k] for k in measured])
    assert trace.pacing is not None
    details = {
        "latency_ms": asdict(stats),
        "pacing": {
            "requested_rate": trace.pacing.requested_rate,
            "achieved_rate": trace.pacing.achieved_rate,
            "start_lateness_ms": asdict(trace.pacing.lateness),
        },
        "gc": trace.gc.summary(),
        "producer_cpu_cores": trace.cpu_cores,
        "machine_busy_pct": trace.machine_busy_pct,
    }
    return Measurement(key, label, role, stats.metrics(), details)


def _relay_hop(
    key: str, label: str, trace: Trace, receipts: dict[str, int], measured: range
) -> Measurement:
    """From the append's return (commit) to the plain consumer's receipt."""
    hops = [
        receipts[trace.ids[k]] - trace.returned_ns[k] for k in measured if trace.ids[k] in receipts
    ]
    stats = LatencyStats.from_ns(hops)
    return Measurement(key, label, Role.DIAGNOSTIC, stats.metrics(), {"latency_ms": asdict(stats)})


def _consumer_hop(trace: Trace, receipts: Receipts, measured: range) -> Measurement:
    """DurableConsumer's handler call minus the plain consumer's receipt of the same event.

    Both read the stream independently in the same process, so the difference is
    what Lathe's exactly-once consumer adds on top of a bare fetch.
    """
    hops = []
    for k in measured:
        event_id = trace.ids[k]
        if event_id in receipts.lathe and event_id in receipts.plain:
            hops.append(receipts.lathe[event_id] - receipts.plain[event_id])
    stats = LatencyStats.from_ns(hops)
    return Measurement(
        "lathe_consumer_hop",
        "[A] DurableConsumer extra: plain receipt -> handler",
        Role.DIAGNOSTIC,
        stats.metrics(),
        {"latency_ms": asdict(stats)},
    )


def _stages(tag: str, trace: Trace, receipts: Receipts, measured: range) -> list[Measurement]:
    """Where each event's time goes, stage by stage (ADR 0013, "Where the lag goes").

    Every timestamp is CLOCK_MONOTONIC on this machine: the append's return (its
    commit), the relay's per-batch probe (loop woke, tail read returned, batch handed to
    the NATS client, ack settled), JetStream's own store time (the delivered message's
    ack subject, wall clock converted in the consumer process), and the consumers'
    receipts. A stage that starts before its predecessor ended (the relay read a row
    before the append call returned) counts as 0.
    """
    samples: dict[str, list[int]] = {}
    labels = {
        "commit_to_relay_woke": "commit (append returned) -> relay loop woke for it",
        "relay_woke_to_read": "relay woke -> tail read returned",
        "relay_read_to_handed": "tail read -> publish handed to the NATS client",
        "handed_to_stored": "handed -> stored by JetStream",
        "stored_to_relay_ack": "stored -> JetStream ack settled in the relay",
        "stored_to_plain_fetch": "stored -> plain consumer's fetch returned",
        "stored_to_durable_delivered": "stored -> delivered to DurableConsumer's process",
        "durable_delivered_to_batch": "delivered -> its batch taken up (queue wait)",
        "durable_batch_to_handler": "batch taken up -> handler called (BEGIN + dedupe INSERT)",
        "durable_handler_to_acked": "handler -> committed and acked",
    }
    for key in labels:
        samples[key] = []

    def add(key: str, start: int, end: int) -> None:
        samples[key].append(max(end - start, 0))

    assert trace.relay is not None
    for k in measured:
        event_id = trace.ids[k]
        relay = trace.relay.of(trace.positions[k])
        plain = receipts.plain_stages.get(event_id)
        durable = receipts.lathe_stages.get(event_id)
        stored = plain[0] if plain else durable[0] if durable else None
        if relay is not None:
            woke, read, handed, acked = relay
            add("commit_to_relay_woke", trace.returned_ns[k], woke)
            add("relay_woke_to_read", woke, read)
            add("relay_read_to_handed", read, handed)
            if stored is not None:
                add("handed_to_stored", handed, stored)
                add("stored_to_relay_ack", stored, acked)
        if plain:
            add("stored_to_plain_fetch", plain[0], plain[1])
        if durable and event_id in receipts.lathe:
            stored_at, delivered, batch, _, done = durable
            handler = receipts.lathe[event_id]
            add("stored_to_durable_delivered", stored_at, delivered)
            add("durable_delivered_to_batch", delivered, batch)
            add("durable_batch_to_handler", batch, handler)
            add("durable_handler_to_acked", handler, done)
    return [
        measurement(f"{tag}_{key}", f"[{tag.upper()}] {label}", Role.DIAGNOSTIC, samples[key])
        for key, label in labels.items()
        if samples[key]
    ]


async def run(context: BenchContext, params: LagParams) -> FamilyResult:
    raw, raw_receipts = await _raw_path(context, params)
    both, both_receipts = await _lathe_path(context, params, durable=True)
    phases = [("raw", raw, raw_receipts), ("lathe_durable", both, both_receipts)]
    if params.relay_only_phase:
        plain, plain_receipts = await _lathe_path(context, params, durable=False)
        phases.append(("lathe_plain_only", plain, plain_receipts))
    measured = range(round(params.warmup_s * params.rate), len(raw.ids))
    lag_variants = [
        _delivery(
            "raw_jetstream",
            "raw js.publish -> plain pull consumer",
            Role.BASELINE,
            raw,
            raw_receipts,
            False,
            measured,
        ),
        _delivery(
            "lathe_durable_consumer",
            "[A] Lathe append -> relay -> DurableConsumer",
            Role.LATHE,
            both,
            both_receipts,
            True,
            measured,
        ),
        _delivery(
            "lathe_plain_consumer",
            "[A] Lathe append -> relay -> plain pull consumer",
            Role.LATHE,
            both,
            both_receipts,
            False,
            measured,
        ),
    ]
    call_variants = [
        _call_latency(
            "raw_publish", "raw js.publish (until JetStream ack)", Role.BASELINE, raw, measured
        ),
        _call_latency(
            "lathe_append", "[A] Lathe EventStore.append (until commit)", Role.LATHE, both, measured
        ),
        _relay_hop(
            "lathe_relay_hop",
            "[A] relay hop: append returned -> plain consumer",
            both,
            both_receipts.plain,
            measured,
        ),
        _consumer_hop(both, both_receipts, measured),
    ]
    if params.relay_only_phase:
        lag_variants.append(
            _delivery(
                "lathe_plain_consumer_alone",
                "[B] Lathe append -> relay -> plain pull consumer",
                Role.LATHE,
                plain,
                plain_receipts,
                False,
                measured,
            )
        )
        call_variants += [
            _call_latency(
                "lathe_append_alone",
                "[B] Lathe EventStore.append (until commit)",
                Role.LATHE,
                plain,
                measured,
            ),
            _relay_hop(
                "lathe_relay_hop_alone",
                "[B] relay hop: append returned -> plain consumer",
                plain,
                plain_receipts.plain,
                measured,
            ),
        ]
    raw_fetch = [
        stages[1] - stages[0]
        for k in measured
        if (stages := raw_receipts.plain_stages.get(raw.ids[k])) is not None
    ]
    raw_publish = [
        stages[0] - raw.sent_ns[k]
        for k in measured
        if (stages := raw_receipts.plain_stages.get(raw.ids[k])) is not None
    ]
    stage_variants = [
        measurement(
            "raw_stored_to_plain_fetch",
            "raw: stored by JetStream -> plain consumer's fetch returned",
            Role.BASELINE,
            raw_fetch,
        ),
        measurement(
            "raw_publish_to_stored",
            "raw: js.publish called -> stored by JetStream",
            Role.DIAGNOSTIC,
            raw_publish,
        ),
        *_stages("a", both, both_receipts, measured),
    ]
    if params.relay_only_phase:
        stage_variants += _stages("b", plain, plain_receipts, measured)
    stages = Comparison(
        key="lag_stages",
        title="Where the lag goes: each event's time per stage, commit to handler",
        headline="p99",
        higher_is_better=False,
        columns=["p50", "p90", "p99", "max", "mean"],
        variants=stage_variants,
        notes=[
            "Timestamps the code takes anyway or per batch (EventRelay.probe, "
            "DurableConsumer.delivered_at), JetStream's store time, the consumers' receipts; "
            "all CLOCK_MONOTONIC on one machine. p99s of stages do not add up to the "
            "end-to-end p99 (different events are slow in different stages)."
        ],
    )
    where = "a separate process" if params.consumer_process else "the producer's event loop"
    phase_note = (
        "[A]: DurableConsumer and a plain pull consumer read the same stream at once. "
        "[B]: a separate run with only the plain consumer, so the DurableConsumer's CPU "
        "use cannot slow the relay."
    )
    lag = Comparison(
        key="end_to_end_lag",
        title=f"Send -> downstream receipt at {params.rate:g} events/s, one event per call",
        headline="p99",
        higher_is_better=False,
        columns=["p50", "p90", "p99", "max", "delivered_rate", "missing"],
        variants=lag_variants,
        notes=[
            f"{len(measured)} measured events per run over {params.duration_s:g}s after a "
            f"{params.warmup_s:g}s warm-up; consumers in {where}.",
            "Receipt: a plain consumer's fetch returned the message; DurableConsumer called "
            "its handler (inside its transaction, before commit and ack). delivered_rate below "
            "the offered rate: the consumer cannot keep up and its lag grows with the run.",
            phase_note if params.relay_only_phase else phase_note.split(" [B]")[0],
        ],
    )
    calls = Comparison(
        key="producer_call_latency",
        title=f"Where the time goes, under the same {params.rate:g} events/s load",
        headline="p99",
        higher_is_better=False,
        columns=["p50", "p90", "p99", "max", "mean"],
        variants=call_variants,
        notes=[
            "Lathe's end-to-end lag = the append call + the relay hop (+ the DurableConsumer's "
            "extra, which can be negative when it fetched first)."
        ],
    )
    durable = lag.variant("lathe_durable_consumer")
    goals = [
        Goal(
            f"Append -> DurableConsumer lag p99 < 10 ms at {params.rate:g} events/s",
            measured=round(durable.metric("p99"), 2),
            target=10.0,
            unit="ms",
            comparator="<",
        )
    ]
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=[lag, calls, stages],
        goals=goals,
        notes=[
            f"pacing {name}: {_pacing(trace)}; CPU: producer {trace.cpu_cores:.2f} cores"
            + (f", consumer process {_cores(receipts)}" if params.consumer_process else "")
            + f", whole machine {trace.machine_busy_pct:.0f}% busy"
            for name, trace, receipts in phases
        ]
        + [
            f"relay {name}: {len(trace.relay.batches):,} tail reads that found events, "
            f"{len(trace.ids) / max(len(trace.relay.batches), 1):.1f} events per read; "
            f"{len(trace.relay.acks):,} ack settlements"
            for name, trace, _ in phases
            if trace.relay is not None
        ],
    )


def _cores(receipts: Receipts) -> str:
    return f"{receipts.cpu_s / receipts.wall_s:.2f} cores" if receipts.wall_s else "?"


def _pacing(trace: Trace) -> str:
    pacing = trace.pacing
    assert pacing is not None
    return (
        f"{pacing.achieved_rate:,.0f}/s offered (asked {pacing.requested_rate:g}/s), calls "
        f"started late by p50 {pacing.lateness.p50:.2f} ms, p99 {pacing.lateness.p99:.2f} ms; "
        f"producer GC: {trace.gc.summary()['full_collections']} full collections, "
        f"longest pause {trace.gc.summary()['longest_ms']:.1f} ms"
    )


GOALS = (
    GoalSpec(
        issue=10,
        description="Append -> relay -> DurableConsumer lag p99 at 1,000 events/s, next to raw "
        "js.publish -> pull consumer",
        figure="end_to_end_lag/lathe_durable_consumer/p99",
        baseline=("end_to_end_lag/raw_jetstream/p99",),
        compare=Compare.VALUE,
        comparator="<",
        threshold=10.0,
        unit="ms",
    ),
    GoalSpec(
        issue=10,
        description="Append -> relay -> plain pull consumer lag p99 vs raw JetStream",
        figure="end_to_end_lag/lathe_plain_consumer/p99",
        baseline=("end_to_end_lag/raw_jetstream/p99",),
    ),
)

FAMILY = Family(
    name="eventstore.lag",
    summary="Append -> relay -> JetStream consumer lag vs raw JetStream publish -> consume",
    params=LagParams,
    run=run,
    quick={"duration_s": 3.0, "warmup_s": 1.0, "drain_timeout_s": 15.0},
    goals=GOALS,
)
