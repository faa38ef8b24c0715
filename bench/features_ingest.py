"""Feature store streaming ingestion: business events/s into exact window aggregates.

JSON payment events are published to ``<namespace>.ingest.payments`` as fast as
JetStream takes them; the feature store (its own process, as ``lathe up`` starts it)
consumes them exactly once, logs each raw event and merges it into the tiles of a
stream view with six windowed aggregations. Measured: events/s from the first
publish until the last event is in the log (its tiles commit in the same
transaction).

Side by side in one run: the same events through raw JetStream (publish, then a
plain pull consumer that only acks) and through raw asyncpg (the same rows
inserted into a plain table in transactions of the consumer's batch size).
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from bench.families import Family
from bench.goals import GoalSpec
from bench.harness import BenchContext
from bench.results import Comparison, FamilyResult, Measurement, Role, Value
from bench.service_process import free_port, process, run_env, wait_serving
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.messaging import EventStreamNames, ensure_stream
from libs.sdk.features import Aggregation, Entity, FeatureView, StreamSource, repository_of
from services.feature_store.app.streaming.ingest import ingest_streams

_SOURCE = "payments"
_CONSUMER_BATCH = 64
"""The DurableConsumer's default batch size (ConsumerSpec.batch_size)."""


@dataclass(frozen=True)
class IngestParams:
    events: int = 20_000
    entities: int = 2_000
    publish_window: int = 1_000
    """Publishes in flight before waiting for JetStream's acks."""
    timeout_s: float = 600.0


def _definitions() -> rr.ApplyDefinitionsRequest:
    loan = Entity("loan", join_key="loan_id")
    view = FeatureView(
        "payment_activity",
        entity=loan,
        source=StreamSource(_SOURCE, event_time_field="paid_at"),
        aggregations=[
            Aggregation("amount", function, window, f"amount_{function}_{label}")
            for label, window in (("1h", timedelta(hours=1)), ("7d", timedelta(days=7)))
            for function in ("count", "sum", "max")
        ],
        allowed_lateness=timedelta(days=1),
    )
    return rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))


def _payloads(params: IngestParams) -> list[bytes]:
    rng = random.Random(11)
    now = datetime.now(UTC)
    return [
        json.dumps(
            {
                "loan_id": f"L{rng.randrange(params.entities):07d}",
                "paid_at": (now - timedelta(seconds=rng.randrange(20 * 3600))).isoformat(),
                "amount": round(rng.uniform(10, 2000), 2),
            }
        ).encode()
        for _ in range(params.events)
    ]


async def _publish(js: JetStreamContext, subject: str, payloads: list[bytes], window: int) -> None:
    for start in range(0, len(payloads), window):
        await asyncio.gather(
            *(
                js.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4())})
                for data in payloads[start : start + window]
            )
        )


async def _wait_for_count(
    pool: asyncpg.Pool, sql: str, count: int, timeout_s: float, *args: object
) -> None:
    deadline = time.monotonic() + timeout_s
    while await pool.fetchval(sql, *args) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} rows after {timeout_s:.0f} s: {sql}")
        await asyncio.sleep(0.05)


async def _lathe(
    context: BenchContext, params: IngestParams, payloads: list[bytes], pool: asyncpg.Pool
) -> dict[str, float]:
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="lathe-bench-ingest-") as home:
        env = run_env(
            context,
            home,
            LATHE_FEATURE_STORE_ADDR=address,
            LATHE_TRACE_SAMPLE_RATIO="0.01",
        )
        async with process(["-m", "services.feature_store"], env, Path(home) / "fs.log"):
            await wait_serving(address, what="the feature store")
            async with (
                grpc.aio.insecure_channel(address) as channel,
                context.nats(name="bench-ingest") as nats,
            ):
                await FeatureStoreStub(channel).ApplyDefinitions(_definitions())
                subject = ingest_streams(context.namespace).subject(_SOURCE)
                started = time.perf_counter()
                await _publish(nats.jetstream(), subject, payloads, params.publish_window)
                published = time.perf_counter() - started
                await _wait_for_count(
                    pool,
                    "SELECT count(*) FROM feature_store.stream_events WHERE source = $1",
                    len(payloads),
                    params.timeout_s,
                    _SOURCE,
                )
                elapsed = time.perf_counter() - started
                merged = await pool.fetchval(
                    "SELECT coalesce(sum((state ->> 'n')::bigint), 0) "
                    "FROM feature_store.stream_tiles WHERE view = 'payment_activity'"
                )
    return {"seconds": elapsed, "publish_seconds": published, "merged": float(merged or 0)}


async def _raw_jetstream(
    context: BenchContext, params: IngestParams, payloads: list[bytes]
) -> dict[str, float]:
    names = EventStreamNames(context.namespace, "rawingest")
    async with context.nats(name="bench-raw-ingest") as nats:
        js = nats.jetstream()
        await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
        subscription = await js.pull_subscribe(
            names.all_subjects,
            durable="raw",
            stream=names.stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000),
        )
        started = time.perf_counter()
        publishing = asyncio.create_task(
            _publish(js, names.subject(_SOURCE), payloads, params.publish_window)
        )
        consumed = 0
        while consumed < len(payloads):
            try:
                messages = await subscription.fetch(256, timeout=1)
            except TimeoutError:
                continue
            await asyncio.gather(*(m.ack() for m in messages))
            consumed += len(messages)
        await publishing
        return {"seconds": time.perf_counter() - started}


async def _raw_asyncpg(pool: asyncpg.Pool, payloads: list[bytes]) -> dict[str, float]:
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE raw_ingest (source text, event_id uuid, stream_sequence bigint, "
            "arrival_time timestamptz, payload bytea, PRIMARY KEY (source, event_id))"
        )
        rows = [
            (_SOURCE, uuid.uuid4(), i, datetime.now(UTC), data) for i, data in enumerate(payloads)
        ]
        started = time.perf_counter()
        for start in range(0, len(rows), _CONSUMER_BATCH):
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO raw_ingest VALUES ($1, $2, $3, $4, $5)",
                    rows[start : start + _CONSUMER_BATCH],
                )
        return {"seconds": time.perf_counter() - started}


def _rate(events: int, measured: dict[str, float]) -> dict[str, Value]:
    return {
        "events_per_s": Value(round(events / measured["seconds"]), "events/s"),
        "seconds": Value(round(measured["seconds"], 2), "s"),
    }


async def run(context: BenchContext, params: IngestParams) -> FamilyResult:
    payloads = _payloads(params)
    async with context.pool(max_size=4) as pool:
        raw_js = await _raw_jetstream(context, params, payloads)
        raw_pg = await _raw_asyncpg(pool, payloads)
        lathe = await _lathe(context, params, payloads, pool)
    notes = [
        f"Lathe: publishing took {lathe['publish_seconds']:.2f} s of it; the tiles counted "
        f"{int(lathe['merged']):,} events (each counted once per view)."
    ]
    variants = [
        Measurement(
            "raw_jetstream",
            "raw JetStream: publish + pull consumer that only acks",
            Role.BASELINE,
            _rate(params.events, raw_js),
        ),
        Measurement(
            "raw_asyncpg",
            f"raw asyncpg: the rows inserted in transactions of {_CONSUMER_BATCH}",
            Role.DIAGNOSTIC,
            _rate(params.events, raw_pg),
        ),
        Measurement(
            "lathe_ingest",
            "Lathe: publish -> feature store (1 replica): raw log + 6 windowed aggregates, "
            "exactly once",
            Role.LATHE,
            _rate(params.events, lathe),
        ),
    ]
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=[
            Comparison(
                "ingest",
                f"{params.events:,} payment events over {params.entities:,} loans",
                "events_per_s",
                True,
                ["events_per_s", "seconds"],
                variants,
                notes=notes,
            )
        ],
    )


GOALS = (
    GoalSpec(
        issue=None,
        description="Streaming ingest events/s (raw log + 6 windowed aggregates) vs raw JetStream "
        "publish + ack-only consumer",
        figure="ingest/lathe_ingest/events_per_s",
        baseline=("ingest/raw_jetstream/events_per_s",),
    ),
    GoalSpec(
        issue=11,
        description="Streaming ingest events/s with a LAST_N view added vs today's figure",
        figure="ingest/with_last_n_view/events_per_s",
        baseline=("ingest/scalar_view/events_per_s",),
        comparator=">=",
        threshold=0.7,
        measured_by="features.sequences",
    ),
)

FAMILY = Family(
    name="features.ingest",
    summary="Streaming aggregation ingest (events/s) vs raw JetStream and raw asyncpg",
    params=IngestParams,
    run=run,
    quick={"events": 2_000, "entities": 200},
    goals=GOALS,
)
