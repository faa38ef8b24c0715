"""Feature store: sequence features (LAST_N, ADR 0021) next to today's scalar features.

Four comparisons, each against the scalar figure of the same run on the same machine:

- ``online_read``: the stream-window part of an online read (``WindowReader.read``: query,
  decode, combine; in process, as ``features.windows``) of one busy entity (an event a
  minute for a day) for a view with 6 scalar aggregations over 1 h / 1 d, next to the same
  view plus ``LAST_N(50)`` of (amount, merchant) over 1 d — three list features
  (amounts, merchants, event times). p50 / p99.
- ``online_service``: the same two views as feature services, read with
  ``GetOnlineFeatures`` over gRPC from the feature store in its own process (100 entities,
  filled by backfill). p50 / p99.
- ``ingest``: events/s from the first publish until every event is logged and merged (the
  feature store in its own process, as ``features.ingest``), with one scalar view on the
  source, then with a ``LAST_N(50)`` view added on the same source (and, a diagnostic,
  with a second scalar view added instead). Goal: >= 70%.
- ``training_set``: the point-in-time build of a training set with a sequence feature
  (``GetHistoricalFeatures`` over gRPC: labels up, the raw-event log read and parsed,
  ``LAST_N(20)`` of (amount, merchant) per label as Arrow list columns, the snapshot id,
  Arrow back; ``stream_aggregates_as_of`` in process and the computation alone as
  diagnostics) next to DuckDB's ``ASOF LEFT JOIN`` of the same events' scalar columns
  (tables already loaded; the join alone). Goal: <= 3x, judged on the best call after the
  process's first (``historical_runs``), as ``features.serving`` judges a warm call: the
  first reads and parses the raw-event log, later ones extend the parsed-event cache
  (ADR 0021); the first call is reported beside it.
  The full run is 1M labels; ``--quick`` a small smoke size. ``comparisons`` selects
  comparisons, e.g. ``--set features.sequences.comparisons=training_set``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import duckdb
import grpc
import numpy as np
import pyarrow as pa

from bench.families import Family
from bench.features_ingest import _publish, _wait_for_count
from bench.harness import BenchContext
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role, Value
from bench.service_process import (
    free_port,
    interleaved,
    measurement,
    process,
    run_env,
    wait_serving,
)
from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.db import apply_migrations
from libs.eventstore import EventStore
from libs.sdk.features import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Float64,
    StreamSource,
    String,
    repository_of,
)
from services.feature_store.app.online.windows import WindowReader
from services.feature_store.app.streaming.backfill import import_events
from services.feature_store.app.streaming.history import stream_aggregates_as_of
from services.feature_store.app.streaming.ingest import ingest_streams
from services.feature_store.domain.definitions.rules import validate_repository
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.domain.streaming.as_of import (
    EventArrays,
    EventColumns,
    compute_as_of,
)
from services.feature_store.domain.streaming.events import parse_event
from services.feature_store.service import SPEC
from services.feature_store.store import tiles
from services.feature_store.store.stream_events import RawEvent

_LOAN = Entity("loan", join_key="loan_id")
_HOUR, _DAY = timedelta(hours=1), timedelta(days=1)
_SCALARS = [
    Aggregation("amount", function, window, f"amount_{function}_{label}")
    for label, window in (("1h", _HOUR), ("1d", _DAY))
    for function in ("count", "sum", "max")
]
_SEQUENCE_COLUMNS = {"amount": Float64, "merchant": String}


@dataclass(frozen=True)
class SequencesParams:
    read_events_per_minute: float = 1.0
    """The busy entity's event rate over the day read online."""
    samples: int = 200
    warmup: int = 20
    chunk: int = 20
    ingest_events: int = 20_000
    ingest_entities: int = 2_000
    publish_window: int = 1_000
    ingest_timeout_s: float = 600.0
    ingest_rounds: int = 3
    """Each ingest variant runs this many times, interleaved; the best run counts."""
    labels: int = 1_000_000
    """Label rows of the training set (the issue's size: 1M)."""
    history_events: int = 1_000_000
    history_entities: int = 100_000
    history_days: int = 30
    comparisons: str = "online_read,online_service,ingest,training_set"
    """Which comparisons run (comma-separated), e.g. ``--set
    features.sequences.comparisons=training_set`` for the training set alone."""
    historical_runs: int = 3
    """GetHistoricalFeatures calls on one feature-store process: the first reads and parses
    the raw-event log (cold); the best of the others (the parsed-event cache extended, not
    rebuilt) is the figure the goal judges, as ``features.serving`` judges a warm call."""


def _view(name: str, source: str, *, scalars: bool, sequence: int | None) -> FeatureView:
    aggregations = list(_SCALARS) if scalars else []
    if sequence is not None:
        aggregations.append(
            Aggregation("", "last_n", _DAY, "recent", n=sequence, columns=_SEQUENCE_COLUMNS)
        )
    return FeatureView(
        name,
        entity=_LOAN,
        source=StreamSource(source, event_time_field="paid_at"),
        aggregations=aggregations,
        allowed_lateness=_DAY,
    )


def _validated(view: FeatureView) -> m.FeatureView:
    return validate_repository(repository_of([_LOAN, view]), []).feature_views[0]


def _body(rng: random.Random, loan: str, at: datetime) -> dict[str, object]:
    return {
        "loan_id": loan,
        "paid_at": at.isoformat(),
        "amount": round(rng.uniform(10, 2000), 2),
        "merchant": f"shop-{rng.randrange(500)}",
    }


# -- online read ---------------------------------------------------------------------------


async def _online_read(context: BenchContext, params: SequencesParams) -> Comparison:
    scalar = agg.spec_of(
        _validated(_view("busy_scalar", "pay", scalars=True, sequence=None)), "loan_id"
    )
    sequence = agg.spec_of(
        _validated(_view("busy_seq", "pay", scalars=True, sequence=50)), "loan_id"
    )
    rng = random.Random(3)
    now = datetime.now(UTC)
    count = int(params.read_events_per_minute * 24 * 60)
    bodies = [
        _body(rng, "M1", now - timedelta(seconds=rng.randrange(86_400))) for _ in range(count)
    ]
    async with context.pool(max_size=4) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(
                conn, "feature_store", [*EventStore.migrations(), *SPEC.migrations]
            )
            async with conn.transaction():
                for spec in (scalar, sequence):
                    events = [
                        parse_event(spec, b, arrival_us=agg.to_us(now), sequence=i)
                        for i, b in enumerate(bodies)
                    ]
                    built = agg.build_tiles(spec, events)
                    await tiles.replace_tiles(
                        conn,
                        spec.view,
                        1,
                        {k: agg.encode_state(s) for k, s in built.items()},
                        {k: agg.encode_state(s) for k, s in agg.build_rollups(spec, built).items()},
                    )
                    await tiles.set_rollups_complete(conn, spec.view, 1, True)
        reader = WindowReader(pool)
        samples = (
            await interleaved(
                {
                    "scalar": lambda: reader.read([(scalar, "M1")], datetime.now(UTC)),
                    "last_n": lambda: reader.read([(sequence, "M1")], datetime.now(UTC)),
                },
                samples=params.samples,
                warmup=params.warmup,
                chunk=params.chunk,
            )
        ).steady
        read = await reader.read([(sequence, "M1")], datetime.now(UTC))
    values = m.FeatureRow.FromString(read[(sequence.view, 1)]["M1"].row).values
    recent = list(values[len(_SCALARS)].float64_list_value.values)
    variants = [
        measurement(
            "scalar",
            "6 scalar aggregations over 1 h / 1 d (today's read)",
            Role.BASELINE,
            samples["scalar"],
        ),
        measurement(
            "last_n",
            "the same + LAST_N(50) of (amount, merchant) over 1 d: 3 list features",
            Role.LATHE,
            samples["last_n"],
        ),
    ]
    return Comparison(
        "online_read",
        f"One entity with {count:,} events in a day, from rollups + edge tiles",
        "p99",
        False,
        ["p50", "p90", "p99", "max", "mean"],
        variants,
        notes=[f"the LAST_N feature held {len(recent)} amounts, oldest first."],
    )


async def _served(context: BenchContext, params: SequencesParams) -> Comparison:
    """GetOnlineFeatures over gRPC (the feature store in its own process) of a feature
    service with the LAST_N(50) view next to one with the scalar view: 100 busy entities,
    filled by backfill from imported history."""
    now = datetime.now(UTC)
    rng = random.Random(7)
    per_entity = int(params.read_events_per_minute * 24 * 60)
    raw = [
        RawEvent(
            uuid.uuid4(),
            i,
            now,
            json.dumps(
                _body(rng, f"L{i % 100}", now - timedelta(seconds=rng.randrange(86_000)))
            ).encode(),
        )
        for i in range(100 * per_entity)
    ]
    views = [
        _view("served_scalar", "served", scalars=True, sequence=None),
        _view("served_seq", "served", scalars=True, sequence=50),
    ]
    services = [
        FeatureService("scalar_service", features=["served_scalar:*"]),
        FeatureService("sequence_service", features=["served_seq:*"]),
    ]
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="lathe-bench-seq-") as home:
        env = run_env(
            context, home, LATHE_FEATURE_STORE_ADDR=address, LATHE_TRACE_SAMPLE_RATIO="0.01"
        )
        async with (
            context.pool(max_size=4) as pool,
            process(["-m", "services.feature_store"], env, Path(home) / "fs.log"),
        ):
            await wait_serving(address, what="the feature store")
            async with grpc.aio.insecure_channel(address) as channel:
                stub = FeatureStoreStub(channel)
                await stub.ApplyDefinitions(
                    rr.ApplyDefinitionsRequest(repository=repository_of([_LOAN, *views, *services]))
                )
                await import_events(pool, "served", raw)
                for view in views:
                    await stub.BackfillStreamView(
                        rr.BackfillStreamViewRequest(feature_view=view.name)
                    )

                def read(service: str) -> Callable[[], Awaitable[object]]:
                    def call() -> Awaitable[object]:
                        key = m.Value(string_value=f"L{rng.randrange(100)}")
                        return stub.GetOnlineFeatures(  # type: ignore[no-any-return]
                            rr.GetOnlineFeaturesRequest(
                                feature_service=service,
                                entities={"loan_id": m.RepeatedValue(values=[key])},
                            )
                        )

                    return call

                samples = (
                    await interleaved(
                        {
                            "scalar_service": read("scalar_service"),
                            "sequence_service": read("sequence_service"),
                        },
                        samples=params.samples,
                        warmup=params.warmup,
                        chunk=params.chunk,
                    )
                ).steady
    return Comparison(
        "online_service",
        f"GetOnlineFeatures of one entity (of 100, {per_entity:,} events a day each) over "
        "gRPC, feature store in its own process",
        "p99",
        False,
        ["p50", "p90", "p99", "max", "mean"],
        [
            measurement(
                "scalar_service",
                "a feature service of the 6 scalar aggregations (today's read)",
                Role.BASELINE,
                samples["scalar_service"],
            ),
            measurement(
                "sequence_service",
                "a feature service of the same + LAST_N(50) of (amount, merchant): 9 features",
                Role.LATHE,
                samples["sequence_service"],
            ),
        ],
    )


# -- ingest --------------------------------------------------------------------------------


async def _ingest_once(
    context: BenchContext,
    params: SequencesParams,
    pool: asyncpg.Pool,
    source: str,
    views: list[FeatureView],
    payloads: list[bytes],
) -> float:
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="lathe-bench-seq-") as home:
        env = run_env(
            context, home, LATHE_FEATURE_STORE_ADDR=address, LATHE_TRACE_SAMPLE_RATIO="0.01"
        )
        async with process(["-m", "services.feature_store"], env, Path(home) / "fs.log"):
            await wait_serving(address, what="the feature store")
            async with (
                grpc.aio.insecure_channel(address) as channel,
                context.nats(name="bench-seq-ingest") as nats,
            ):
                await FeatureStoreStub(channel).ApplyDefinitions(
                    rr.ApplyDefinitionsRequest(repository=repository_of([_LOAN, *views]))
                )
                subject = ingest_streams(context.namespace).subject(source)
                started = time.perf_counter()
                await _publish(nats.jetstream(), subject, payloads, params.publish_window)
                await _wait_for_count(
                    pool,
                    "SELECT count(*) FROM feature_store.stream_events WHERE source = $1",
                    len(payloads),
                    params.ingest_timeout_s,
                    source,
                )
                return time.perf_counter() - started


async def _ingest(context: BenchContext, params: SequencesParams) -> tuple[Comparison, Goal]:
    rng = random.Random(11)
    now = datetime.now(UTC)
    payloads = [
        json.dumps(
            _body(
                rng,
                f"L{rng.randrange(params.ingest_entities):07d}",
                now - timedelta(seconds=rng.randrange(20 * 3600)),
            )
        ).encode()
        for _ in range(params.ingest_events)
    ]
    variants = {
        "without": ("pay_a", [_view("activity_a", "pay_a", scalars=True, sequence=None)]),
        "with_sequence": (
            "pay_b",
            [
                _view("activity_b", "pay_b", scalars=True, sequence=None),
                _view("sequence_b", "pay_b", scalars=False, sequence=50),
            ],
        ),
        "with_scalar": (
            "pay_c",
            [
                _view("activity_c", "pay_c", scalars=True, sequence=None),
                _view("activity_c2", "pay_c", scalars=True, sequence=None),
            ],
        ),
    }
    seconds: dict[str, list[float]] = {key: [] for key in variants}
    async with context.pool(max_size=4) as pool:
        for round_ in range(params.ingest_rounds):  # A, B, C, A, B, C: drifts reach all
            for key, (source, views) in variants.items():
                suffix = f"_{round_}" if round_ else ""
                renamed = [dataclasses.replace(v, name=f"{v.name}{suffix}") for v in views]
                renamed = [
                    dataclasses.replace(v, source=StreamSource(f"{source}{suffix}", "paid_at"))
                    for v in renamed
                ]
                seconds[key].append(
                    await _ingest_once(
                        context, params, pool, f"{source}{suffix}", renamed, payloads
                    )
                )
    without, with_sequence, with_scalar = (min(seconds[key]) for key in variants)
    rates = [params.ingest_events / s for s in (without, with_sequence, with_scalar)]
    variants = [
        Measurement(
            "scalar_view",
            "1 view: 6 scalar aggregations (1 h, 1 d)",
            Role.BASELINE,
            {
                "events_per_s": Value(round(rates[0]), "events/s"),
                "seconds": Value(round(without, 2), "s"),
            },
        ),
        Measurement(
            "with_last_n_view",
            "the same + a LAST_N(50) view of (amount, merchant) over 1 d on the source",
            Role.LATHE,
            {
                "events_per_s": Value(round(rates[1]), "events/s"),
                "seconds": Value(round(with_sequence, 2), "s"),
            },
        ),
        Measurement(
            "with_scalar_view",
            "the same + a second scalar view instead (what any added view costs)",
            Role.DIAGNOSTIC,
            {
                "events_per_s": Value(round(rates[2]), "events/s"),
                "seconds": Value(round(with_scalar, 2), "s"),
            },
        ),
    ]
    goal = Goal(
        "ingest events/s with a LAST_N view added, as a share of the scalar-only figure "
        "(baseline: the scalar view alone, same run)",
        round(rates[1] / rates[0], 3),
        0.7,
        "ratio",
        ">=",
    )
    comparison = Comparison(
        "ingest",
        f"{params.ingest_events:,} events over {params.ingest_entities:,} loans, publish -> "
        f"logged and merged (1 replica), best of {params.ingest_rounds} interleaved runs",
        "events_per_s",
        True,
        ["events_per_s", "seconds"],
        variants,
    )
    return comparison, goal


# -- training set --------------------------------------------------------------------------


async def _historical(
    context: BenchContext, keys: pa.Array, times: pa.Array, runs: int
) -> tuple[list[float], int]:
    """GetHistoricalFeatures of the history view for these labels from a feature-store
    process (applied first; its stream aggregates read the raw log, so nothing to
    backfill), ``runs`` times: seconds of each call from the request to the last Arrow
    message (the first reads the raw log cold), and rows."""
    address = f"127.0.0.1:{free_port()}"
    sink = pa.BufferOutputStream()
    labels = pa.table({"loan_id": keys, "event_time": times})
    with pa.ipc.new_stream(sink, labels.schema) as writer:
        writer.write_table(labels)
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=["history_seq:*"]),
        entity_rows_arrow=sink.getvalue().to_pybytes(),
    )
    with tempfile.TemporaryDirectory(prefix="lathe-bench-seq-") as home:
        env = run_env(
            context, home, LATHE_FEATURE_STORE_ADDR=address, LATHE_TRACE_SAMPLE_RATIO="0.01"
        )
        async with process(["-m", "services.feature_store"], env, Path(home) / "fs.log"):
            await wait_serving(address, what="the feature store")
            async with grpc.aio.insecure_channel(
                address, options=[("grpc.max_send_message_length", 1 << 30)]
            ) as channel:
                stub = FeatureStoreStub(channel)
                await stub.ApplyDefinitions(
                    rr.ApplyDefinitionsRequest(repository=repository_of([_LOAN, _history_view()]))
                )
                seconds = []
                for _ in range(max(runs, 1)):
                    started = time.perf_counter()
                    parts = [
                        r.arrow_ipc
                        async for r in stub.GetHistoricalFeatures(request)
                        if not r.HasField("snapshot")
                    ]
                    seconds.append(time.perf_counter() - started)
    return seconds, pa.ipc.open_stream(b"".join(parts)).read_all().num_rows


def _history_view() -> FeatureView:
    return FeatureView(
        "history_seq",
        entity=_LOAN,
        source=StreamSource("history", event_time_field="paid_at"),
        aggregations=[
            Aggregation("", "last_n", 7 * _DAY, "recent", n=20, columns=_SEQUENCE_COLUMNS)
        ],
        allowed_lateness=_HOUR,
    )


async def _training_set(context: BenchContext, params: SequencesParams) -> tuple[Comparison, Goal]:
    rng = np.random.default_rng(5)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    span_s = params.history_days * 86_400
    loans = rng.integers(0, params.history_entities, params.history_events)
    offsets = np.sort(rng.integers(0, span_s * 1_000_000, params.history_events))
    delays = rng.choice([0, 0, 0, 30_000_000, 600_000_000], params.history_events)
    amounts = np.round(rng.uniform(10, 2000, params.history_events), 2)
    merchants = rng.integers(0, 500, params.history_events)
    t0_us = agg.to_us(t0)
    raw = [
        RawEvent(
            uuid.uuid4(),
            i,
            agg.from_us(t0_us + int(offsets[i]) + int(delays[i])),
            json.dumps(
                {
                    "loan_id": f"L{loans[i]}",
                    "paid_at": (t0_us + int(offsets[i])) / 1e6,
                    "amount": float(amounts[i]),
                    "merchant": f"shop-{merchants[i]}",
                }
            ).encode(),
        )
        for i in range(params.history_events)
    ]
    label_keys = pa.array(
        [f"L{k}" for k in rng.integers(0, params.history_entities, params.labels)]
    )
    label_us = t0_us + rng.integers(86_400 * 1_000_000, span_s * 1_000_000, params.labels)
    label_times = pa.array(label_us, pa.timestamp("us", tz="UTC"))
    view = _validated(_history_view())
    async with context.pool(max_size=4) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(
                conn, "feature_store", [*EventStore.migrations(), *SPEC.migrations]
            )
        for start in range(0, len(raw), 50_000):
            await import_events(pool, "history", raw[start : start + 50_000])
        started = time.perf_counter()
        table = await stream_aggregates_as_of(pool, view, "loan_id", label_keys, label_times)
        lathe_s = time.perf_counter() - started
        calls, rows = await _historical(context, label_keys, label_times, params.historical_runs)
    first_s = calls[0]
    service_s = min(calls[1:]) if len(calls) > 1 else first_s

    spec = agg.spec_of(view, "loan_id")
    events = EventArrays.of(
        spec,
        EventColumns.of(
            spec,
            (
                parse_event(
                    spec,
                    json.loads(r.payload),
                    arrival_us=agg.to_us(r.arrival_time),
                    sequence=r.stream_sequence,
                )
                for r in raw
            ),
        ),
    )
    started = time.perf_counter()
    compute_as_of(spec, events, label_keys, label_us).to_arrow(spec)
    compute_s = time.perf_counter() - started

    db = duckdb.connect()
    db.register(
        "events_arrow",
        pa.table(
            {
                "loan_id": pa.array([f"L{k}" for k in loans]),
                "event_time": pa.array(t0_us + offsets, pa.timestamp("us")),
                "amount": pa.array(amounts),
                "merchant": pa.array([f"shop-{k}" for k in merchants]),
            }
        ),
    )
    db.register(
        "labels_arrow",
        pa.table({"loan_id": label_keys, "event_time": pa.array(label_us, pa.timestamp("us"))}),
    )
    db.execute("CREATE TABLE events AS SELECT * FROM events_arrow")
    db.execute("CREATE TABLE labels AS SELECT * FROM labels_arrow")
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        db.sql(
            "SELECT l.loan_id, l.event_time, f.amount, f.merchant FROM labels l "
            "ASOF LEFT JOIN events f ON l.loan_id = f.loan_id AND l.event_time >= f.event_time"
        ).to_arrow_table()
        best = min(best, time.perf_counter() - started)
    db.close()
    lengths = np.diff(table.column("recent__amount").combine_chunks().offsets.to_numpy())
    assert rows == params.labels, rows
    variants = [
        Measurement(
            "duckdb_asof",
            "DuckDB ASOF LEFT JOIN of the scalar columns (amount, merchant), loaded tables",
            Role.BASELINE,
            {"seconds": Value(round(best, 3), "s")},
        ),
        Measurement(
            "lathe_last_n",
            "Lathe GetHistoricalFeatures over gRPC (own process), best later call: labels up as "
            "Arrow, LAST_N(20) of (amount, merchant) over 7 d as Arrow lists, snapshot id, "
            "Arrow back",
            Role.LATHE,
            {"seconds": Value(round(service_s, 3), "s")},
        ),
        Measurement(
            "lathe_first_call",
            "the same, the process's first call: the raw-event log read and parsed (cold)",
            Role.DIAGNOSTIC,
            {"seconds": Value(round(first_s, 3), "s")},
        ),
        Measurement(
            "lathe_as_of",
            "stream_aggregates_as_of in process, no cache: raw log read + parsed, the as-of "
            "computation",
            Role.DIAGNOSTIC,
            {"seconds": Value(round(lathe_s, 3), "s")},
        ),
        Measurement(
            "compute_only",
            "the as-of computation alone (events already parsed into arrays, as the cache "
            "keeps them)",
            Role.DIAGNOSTIC,
            {"seconds": Value(round(compute_s, 3), "s")},
        ),
    ]
    goal = Goal(
        f"training set with a LAST_N feature at {params.labels:,} labels, as a multiple of "
        "DuckDB's ASOF join of the scalar columns (baseline, same run)",
        round(service_s / best, 2),
        3.0,
        "x",
        "<=",
    )
    comparison = Comparison(
        "training_set",
        f"{params.labels:,} labels over {params.history_events:,} events of "
        f"{params.history_entities:,} loans ({params.history_days} days)",
        "seconds",
        False,
        ["seconds"],
        variants,
        notes=[f"mean sequence length {lengths.mean():.1f} (max 20)."],
    )
    return comparison, goal


async def run(context: BenchContext, params: SequencesParams) -> FamilyResult:
    selected = {name.strip() for name in params.comparisons.split(",") if name.strip()}
    unknown = selected - set(_COMPARISONS)
    if unknown:
        raise ValueError(
            f"comparisons: unknown {sorted(unknown)}; choose from {', '.join(_COMPARISONS)}"
        )
    comparisons: list[Comparison] = []
    goals: list[Goal] = []
    for name in _COMPARISONS:
        if name not in selected:
            continue
        if name == "online_read":
            comparisons.append(await _online_read(context, params))
        elif name == "online_service":
            comparisons.append(await _served(context, params))
        else:
            comparison, goal = await (_ingest if name == "ingest" else _training_set)(
                context, params
            )
            comparisons.append(comparison)
            goals.append(goal)
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=comparisons,
        goals=goals,
    )


_COMPARISONS = ("online_read", "online_service", "ingest", "training_set")


FAMILY = Family(
    name="features.sequences",
    summary="LAST_N sequence features: online read, ingest, training set vs scalar features",
    params=SequencesParams,
    run=run,
    quick={
        "read_events_per_minute": 0.5,
        "samples": 40,
        "warmup": 5,
        "chunk": 10,
        "ingest_events": 2_000,
        "ingest_entities": 200,
        "ingest_rounds": 2,
        "labels": 20_000,
        "history_events": 20_000,
        "history_entities": 2_000,
    },
)
