"""Feature store serving: GetOnlineFeatures and GetHistoricalFeatures vs their baselines.

The feature store runs as its own process, as `lathe up` starts it (1% of new traces
recorded), against this run's database. The data set is the one the Feast and
DuckDB baselines use (bench/feast_baseline/data.py): 5 views x 4 features of lending
data with late corrections, and label rows spread over two years. It is written
into the store's offline log and online table through the store layer (the same
COPY and upsert the service's writer uses); ingestion speed is not what this family
measures.

Side by side in one run: a raw grpc.aio echo (own process) and raw asyncpg key
lookups (the floor under an online read), Feast 0.67's feature server over HTTP and
its in-process SDK (its own virtualenv: `bash bench/feast_baseline/setup.sh`), and
DuckDB's ASOF join over the same data already in memory.

Single-entity calls to Lathe, the echo, asyncpg and Feast's feature server (started
over the same data before the measurement, `run_feast --serve`) are interleaved in
chunks of 100 from this one client, so every variant sees the same machine. Each chunk
starts with one call kept apart ("first call after the other variants ran": other
processes' work has cooled the CPU caches), reported in its own rows, so the p99s
measure the variants rather than the switches. Lathe is measured once its ready reply
entries have filled (ADR 0010), as a service that has been up a while serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.parser import text_string_to_metric_families

from bench.duckdb_asof import run_baseline
from bench.echo_server import ECHO_METHOD, SIZED_METHOD
from bench.families import Family
from bench.feast_baseline import data
from bench.feast_baseline.http_client import HttpClient
from bench.feast_baseline.runner import FeastUnavailable, feast_server, run_feast
from bench.goals import Compare, GoalSpec
from bench.harness import BenchContext, wait_for_quiet
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role, Value
from bench.service_process import (
    Interleaved,
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
from libs.sdk.features import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    PushSource,
    repository_of,
)
from services.feature_store.store import offline, online

_SERVICE = "bench_all"
_TYPES = {"float64": Float64, "int64": Int64}


@dataclass(frozen=True)
class FeaturesParams:
    entities: int = 100_000
    rows_per_entity: int = 10
    labels: int = 1_000_000
    samples: int = 2000
    """Calls per variant for the single-entity comparison."""
    batch_samples: int = 2000
    """Calls per variant for the 100-entity comparison (a p99 needs a few thousand)."""
    batch: int = 100
    warmup: int = 200
    chunk: int = 100
    historical_runs: int = 3
    """GetHistoricalFeatures calls: the first syncs the mirror from Postgres (cold); the
    best of the others is compared with DuckDB's best of 2."""
    feast: bool = True
    feast_historical_labels: int = 1_000_000
    data_dir: str = ""
    """Where the generated data set is cached (default: a directory per spec in /tmp)."""


def _spec(params: FeaturesParams) -> data.DataSpec:
    return data.DataSpec(
        entities=params.entities, rows_per_entity=params.rows_per_entity, labels=params.labels
    )


def _definitions() -> m.FeatureRepository:
    loan = Entity("loan", join_key=data.ENTITY_KEY)
    views = [
        FeatureView(
            view,
            entity=loan,
            source=PushSource(),
            features=[Field(name, _TYPES[kind]) for name, kind in columns],
            ttl=__import__("datetime").timedelta(days=data.TTL_DAYS),
        )
        for view, columns in data.VIEWS.items()
    ]
    service = FeatureService(_SERVICE, [f"{view}:*" for view in data.VIEWS])
    return repository_of([loan, *views, service])


async def _seed(pool: Any, directory: Path, repository: m.FeatureRepository) -> dict[str, float]:
    """Write every view's rows into the offline log and its latest rows online."""
    seconds = {}
    for view in repository.feature_views:
        started = time.perf_counter()
        table = data.read_table(directory, view.name)
        names = [f.name for f in view.features]
        columns = [
            table.column(c).to_pylist()
            for c in (data.ENTITY_KEY, data.EVENT_TIME, data.CREATED_TIME, *names)
        ]
        rows = [(k, e, c, list(values)) for k, e, c, *values in zip(*columns, strict=True)]
        async with pool.acquire() as conn, conn.transaction():
            await offline.append_rows(conn, view, rows)
        ordered = table.sort_by(
            [
                (data.ENTITY_KEY, "ascending"),
                (data.EVENT_TIME, "ascending"),
                (data.CREATED_TIME, "ascending"),
            ]
        )
        keys = ordered.column(data.ENTITY_KEY)
        last = [*pc.not_equal(keys.slice(0, len(keys) - 1), keys.slice(1)).to_pylist(), True]
        latest = ordered.filter(pa.array(last))
        values = [latest.column(n).to_pylist() for n in names]
        kinds = [f.type for f in view.features]
        upserts = []
        for i, (key, event, created) in enumerate(
            zip(
                *(
                    latest.column(c).to_pylist()
                    for c in (data.ENTITY_KEY, data.EVENT_TIME, data.CREATED_TIME)
                ),
                strict=True,
            )
        ):
            row = m.FeatureRow(
                values=[
                    m.Value(int64_value=v[i])
                    if kind == m.VALUE_TYPE_INT64
                    else m.Value(float64_value=v[i])
                    for v, kind in zip(values, kinds, strict=True)
                ]
            )
            upserts.append((key, row.SerializeToString(), event, created, len(names)))
        async with pool.acquire() as conn:
            await online.upsert_latest(conn, view.name, view.version, upserts)
        seconds[view.name] = round(time.perf_counter() - started, 1)
    return seconds


def _labels_ipc(directory: Path, count: int) -> bytes:
    labels = data.read_table(directory, "labels").slice(0, count)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, labels.schema) as writer:
        writer.write_table(labels)
    return sink.getvalue().to_pybytes()


async def _historical(stub: FeatureStoreStub, labels: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    rows, parts = 0, []
    async for response in stub.GetHistoricalFeatures(
        rr.GetHistoricalFeaturesRequest(feature_service=_SERVICE, entity_rows_arrow=labels)
    ):
        if response.HasField("snapshot"):
            rows = response.snapshot.rows
        else:
            parts.append(response.arrow_ipc)
    table = pa.ipc.open_stream(b"".join(parts)).read_all()  # the client has its DataFrame
    assert table.num_rows == rows
    return time.perf_counter() - started, rows


async def _historical_after_restart(
    env: dict[str, str], home: str, address: str, labels: bytes
) -> float:
    """A training set's seconds from a feature-store process started again on ``home``."""
    async with (
        process(["-m", "services.feature_store"], env, Path(home) / "fs-restarted.log"),
        grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel,
    ):
        await wait_serving(address, what="the restarted feature store")
        seconds, _ = await _historical(FeatureStoreStub(channel), labels)
    return seconds


def _ready_entries(metrics_port: int) -> float:
    """The service's ready reply entries (ADR 0010), from its Prometheus endpoint."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("lathe_feature_store_online_replica_vector_entries")
        for sample in family.samples
    )


async def _wait_for_ready_entries(metrics_port: int, entities: int, timeout_s: float) -> float:
    """Seconds until the service holds a ready entry per entity (its index has filled)."""
    started = time.perf_counter()
    while await asyncio.to_thread(_ready_entries, metrics_port) < entities:
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"the feature service's ready entries did not fill in {timeout_s} s")
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


async def _start_feast_http(
    stack: contextlib.AsyncExitStack,
    params: FeaturesParams,
    directory: Path,
    home: str,
    notes: list[str],
) -> HttpClient | None:
    """Feast's feature server over the same data, running until ``stack`` closes, and a
    client of it; None (and a note) where Feast's environment is missing."""
    if not params.feast:
        return None
    try:
        server = await stack.enter_async_context(
            feast_server(directory, Path(home) / "feast-serve.log")
        )
    except FeastUnavailable as missing:
        notes.append(f"Feast not measured: {missing}")
        return None
    client = HttpClient(server.port, server.features)
    stack.callback(client.close)
    reply = await asyncio.to_thread(client.get, data.loan_ids(1).to_pylist())
    names = reply["metadata"]["feature_names"]
    if len(names) != len(server.features) + 1:  # the join key, then every feature
        raise RuntimeError(f"Feast's server answered {names}, not {server.features}")
    notes.append(
        f"Feast's feature server (same run, its calls interleaved with Lathe's): "
        f"apply + materialize {server.setup_s}"
    )
    return client


def _keys(rng: random.Random, ids: list[str], count: int) -> m.RepeatedValue:
    return m.RepeatedValue(values=[m.Value(string_value=rng.choice(ids)) for _ in range(count)])


async def run(context: BenchContext, params: FeaturesParams) -> FamilyResult:
    spec = _spec(params)
    directory = Path(
        params.data_dir
        or f"/tmp/lathe-features-bench/{spec.entities}-{spec.rows_per_entity}-"
        f"{spec.labels}-{spec.seed}"
    )
    await asyncio.to_thread(data.write_dataset, spec, directory)
    repository = _definitions()
    address, echo_port, metrics_port = f"127.0.0.1:{free_port()}", free_port(), free_port()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lathe-bench-features-") as home:
        env = run_env(
            context,
            home,
            LATHE_FEATURE_STORE_ADDR=address,
            LATHE_TRACE_SAMPLE_RATIO="0.01",
            LATHE_METRICS_PORT=str(metrics_port),
        )
        async with (
            process(["-m", "services.feature_store"], env, Path(home) / "fs.log"),
            process(["-m", "bench.echo_server", str(echo_port)], env, Path(home) / "echo.log"),
            grpc.aio.insecure_channel(
                address,
                options=[
                    ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.max_send_message_length", 64 << 20),
                ],
            ) as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
            context.pool(max_size=4) as pool,
            contextlib.AsyncExitStack() as feast_stack,
        ):
            await wait_serving(address, what="the feature store")
            stub = FeatureStoreStub(channel)
            await stub.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository))
            seed_s = await _seed(pool, directory, repository)
            feast_http = await _start_feast_http(feast_stack, params, directory, home, notes)
            # The service applies the seeded online rows to its in-memory replica in the
            # background (ADR 0009); measure once that, and autovacuum, have settled.
            settled_s = await wait_for_quiet(max_busy_pct=30, quiet_s=2, timeout_s=120)
            rng = random.Random(5)
            ids = data.loan_ids(spec.entities).to_pylist()
            # The first read of the feature service starts filling its ready entries in
            # the background (ADR 0010); a service that has been up a while has them.
            await stub.GetOnlineFeatures(
                rr.GetOnlineFeaturesRequest(
                    feature_service=_SERVICE, entities={data.ENTITY_KEY: _keys(rng, ids, 1)}
                )
            )
            filled_s = await _wait_for_ready_entries(metrics_port, spec.entities, timeout_s=300)
            notes.append(
                f"seeded through the store layer in {sum(seed_s.values()):.0f} s: {seed_s}; "
                f"then waited {settled_s:.0f} s for the machine to settle and "
                f"{filled_s:.1f} s for the service's ready entries to fill"
            )
            echo = echo_channel.unary_unary(ECHO_METHOD)
            one_request = rr.GetOnlineFeaturesRequest(
                feature_service=_SERVICE, entities={data.ENTITY_KEY: _keys(rng, ids, 1)}
            )
            echo_payload = one_request.SerializeToString()
            pk_sql = (
                "SELECT row FROM feature_store.online_values "
                "WHERE view = $1 AND version = 1 AND entity_key = $2"
            )
            five_sql = (
                "SELECT o.row FROM unnest($1::text[], $2::int[], $3::text[]) "
                "AS k(view, version, entity_key) "
                "JOIN feature_store.online_values o USING (view, version, entity_key)"
            )
            views = list(data.VIEWS)

            def one() -> rr.GetOnlineFeaturesRequest:
                return rr.GetOnlineFeaturesRequest(
                    feature_service=_SERVICE,
                    entities={data.ENTITY_KEY: _keys(rng, ids, 1)},
                )

            single_calls: dict[str, Callable[[], Awaitable[object]]] = {
                "raw_grpc_echo": lambda: echo(echo_payload),
                "raw_pk_read": lambda: pool.fetchval(pk_sql, "loan_terms", rng.choice(ids)),
                "raw_five_rows": lambda: pool.fetch(
                    five_sql, views, [1] * 5, [rng.choice(ids)] * 5
                ),
                "lathe_one": lambda: stub.GetOnlineFeatures(one()),
            }
            if feast_http is not None:
                client = feast_http

                async def feast_one() -> object:
                    # A blocking client, as Feast's own run uses; nothing else runs meanwhile.
                    return client.get([rng.choice(ids)])

                single_calls["feast_http"] = feast_one
            single = await interleaved(
                single_calls,
                samples=params.samples,
                warmup=params.warmup,
                chunk=params.chunk,
            )
            # A fresh draw of entities for every call, built before the clock starts: a
            # few request sets sent in turn would keep their rows in the CPU's caches,
            # which uniform traffic over 100k entities does not.
            batch_requests = iter(
                [
                    rr.GetOnlineFeaturesRequest(
                        feature_service=_SERVICE,
                        entities={data.ENTITY_KEY: _keys(rng, ids, params.batch)},
                    ).SerializeToString()
                    for _ in range(3 * (params.batch_samples + params.warmup // 4) + 1)
                ]
            )
            online_method = "/lathe.feature_store.v1.FeatureStore/GetOnlineFeatures"
            parsed = channel.unary_unary(
                online_method,
                request_serializer=None,
                response_deserializer=rr.GetOnlineFeaturesResponse.FromString,
            )
            unparsed = channel.unary_unary(online_method)
            reply_size = str(len(await unparsed(next(batch_requests)))).encode()
            sized = echo_channel.unary_unary(SIZED_METHOD)
            batch = await interleaved(
                {
                    "raw_grpc_reply_sized": lambda: sized(reply_size),
                    "lathe_batch": lambda: parsed(next(batch_requests)),
                    "lathe_batch_unparsed": lambda: unparsed(next(batch_requests)),
                },
                samples=params.batch_samples,
                warmup=params.warmup // 4,
                chunk=params.chunk,
            )
            labels = _labels_ipc(directory, spec.labels)
            historical = [await _historical(stub, labels) for _ in range(params.historical_runs)]
        # The same home again: the restarted process reopens its mirror file (ADR 0008).
        after_restart = await _historical_after_restart(env, home, address, labels)
    duck = await asyncio.to_thread(run_baseline, directory, repeats=2, methods=("record_setters",))
    feast: dict[str, Any] | None = None
    if params.feast:
        try:
            feast = await asyncio.to_thread(
                run_feast,
                directory,
                [
                    "--historical-labels",
                    str(params.feast_historical_labels),
                    "--historical-modes",
                    "default",
                    "--skip-http",  # measured above, side by side with Lathe
                    "--requests",
                    str(params.samples),
                    "--batch-requests",
                    str(params.batch_samples),
                ],
                timeout_s=3600,
            )
        except FeastUnavailable as missing:
            notes.append(f"Feast not measured: {missing}")
    return _result(params, spec, single, batch, historical, after_restart, duck, feast, notes)


def _ms(value: float) -> Value:
    return Value(round(value, 3), "ms")


def _feast_latency(feast: dict[str, Any] | None, key: str) -> dict[str, float] | None:
    if not feast or key not in feast or "latency_ms" not in feast[key]:
        return None
    return dict(feast[key]["latency_ms"])


def _switch_in(single: Interleaved, key: str, label: str) -> Measurement:
    samples = single.switch_in[key]
    return measurement(
        f"{key}_switch_in",
        f"{label}: first call after the other variants ran ({len(samples)} calls)",
        Role.DIAGNOSTIC,
        samples,
    )


def _result(  # type: ignore[no-untyped-def]
    params,
    spec,
    interleaved_one: Interleaved,
    interleaved_batch: Interleaved,
    historical,
    after_restart,
    duck,
    feast,
    notes,
) -> FamilyResult:
    single, batch = interleaved_one.steady, interleaved_batch.steady
    echo = measurement(
        "raw_grpc_echo", "raw grpc.aio echo (own process)", Role.BASELINE, single["raw_grpc_echo"]
    )
    pk = measurement(
        "raw_pk_read",
        "raw asyncpg primary-key read (one view's row)",
        Role.DIAGNOSTIC,
        single["raw_pk_read"],
    )
    five = measurement(
        "raw_five_rows",
        "raw asyncpg read of the 5 views' rows (one query)",
        Role.DIAGNOSTIC,
        single["raw_five_rows"],
    )
    one = measurement(
        "lathe_one",
        "Lathe GetOnlineFeatures, 1 entity x 20 features",
        Role.LATHE,
        single["lathe_one"],
    )
    hundred = measurement(
        "lathe_batch",
        f"Lathe GetOnlineFeatures, {params.batch} entities x 20 features",
        Role.LATHE,
        batch["lathe_batch"],
    )
    single_variants = [echo, pk, five, one]
    feast_http = (
        measurement(
            "feast_http",
            "Feast feature server over HTTP, 1 entity x 20 (http.client, JSON parsed)",
            Role.DIAGNOSTIC,
            single["feast_http"],
        )
        if "feast_http" in single
        else None
    )
    if feast_http is not None:
        single_variants.append(feast_http)
    single_variants += [
        _switch_in(interleaved_one, key, label)
        for key, label in (
            ("raw_grpc_echo", "raw echo"),
            ("lathe_one", "Lathe"),
            ("feast_http", "Feast HTTP"),
        )
        if key in single
    ]
    reply_sized = measurement(
        "raw_grpc_reply_sized",
        f"raw grpc.aio call returning a reply as large as the {params.batch}-entity one "
        "(bytes, not parsed)",
        Role.DIAGNOSTIC,
        batch["raw_grpc_reply_sized"],
    )
    unparsed = measurement(
        "lathe_batch_unparsed",
        f"the same {params.batch}-entity call, reply left as bytes (the client's parse excluded)",
        Role.DIAGNOSTIC,
        batch["lathe_batch_unparsed"],
    )
    batch_variants = [echo, reply_sized, hundred, unparsed]
    feast_batch = _feast_latency(feast, "inprocess_batch")
    if feast_batch:
        batch_variants.insert(
            0,
            Measurement(
                "feast_inprocess",
                f"Feast get_online_features in process, {params.batch} entities",
                Role.DIAGNOSTIC,
                {
                    k: _ms(v)
                    for k, v in feast_batch.items()
                    if k in ("p50", "p90", "p99", "max", "mean")
                },
            ),
        )
    cold, warm = (
        historical[0][0],
        min(t for t, _ in historical[1:]) if len(historical) > 1 else historical[0][0],
    )
    duck_simple = duck["asof_simple"]["best_s"]
    duck_bitemporal = duck["bitemporal"]["record_setters"]["best_s"]
    historical_variants = [
        Measurement(
            "duckdb_asof",
            "DuckDB ASOF join, data already in memory (event time only)",
            Role.BASELINE,
            {"seconds": Value(duck_simple, "s")},
        ),
        Measurement(
            "duckdb_bitemporal",
            "DuckDB bitemporal join + TTL, data in memory",
            Role.DIAGNOSTIC,
            {"seconds": Value(duck_bitemporal, "s")},
        ),
        Measurement(
            "lathe_cold",
            "Lathe GetHistoricalFeatures over gRPC, first call (mirror synced from Postgres)",
            Role.LATHE,
            {"seconds": Value(round(cold, 3), "s")},
        ),
        Measurement(
            "lathe_warm",
            "Lathe GetHistoricalFeatures over gRPC, later call",
            Role.LATHE,
            {"seconds": Value(round(warm, 3), "s")},
        ),
        Measurement(
            "lathe_after_restart",
            "Lathe GetHistoricalFeatures over gRPC, first call after the process restarted "
            "(mirror file reopened, checked against Postgres)",
            Role.LATHE,
            {"seconds": Value(round(after_restart, 3), "s")},
        ),
    ]
    feast_hist = (feast or {}).get("historical", {})
    default = feast_hist.get("default") if isinstance(feast_hist, dict) else None
    if isinstance(default, dict) and "seconds" in default:
        feast_labels = default.get("labels", params.feast_historical_labels)
        historical_variants.append(
            Measurement(
                "feast_historical",
                f"Feast get_historical_features ({feast_labels} labels; "
                "not bitemporal, drops rows)",
                Role.DIAGNOSTIC,
                {"seconds": Value(default["seconds"], "s")},
            )
        )
    goals = [
        Goal(
            "GetOnlineFeatures 1 entity x 20 p99 <= 1.3x "
            "(raw gRPC echo p99 + raw asyncpg key lookup p99)",
            round(one.metric("p99") / (echo.metric("p99") + pk.metric("p99")), 2),
            1.3,
            "x the floor",
            "<=",
        ),
        Goal(
            f"GetOnlineFeatures {params.batch} entities p99 <= 2 ms",
            round(hundred.metric("p99"), 3),
            2.0,
            "ms",
            "<=",
        ),
        Goal(
            "GetHistoricalFeatures (warm) <= 3x DuckDB's in-memory ASOF join",
            round(warm / duck_simple, 2),
            3.0,
            "x DuckDB",
            "<=",
        ),
    ]
    if feast_http is not None:
        goals.append(
            Goal(
                "Feast HTTP p99 / Lathe 1-entity p99 >= 2",
                round(feast_http.metric("p99") / one.metric("p99"), 2),
                2.0,
                "x",
                ">=",
            )
        )
    if feast_batch:
        goals.append(
            Goal(
                f"Feast in-process {params.batch}-entity p50 / Lathe p50 >= 3",
                round(feast_batch["p50"] / hundred.metric("p50"), 2),
                3.0,
                "x",
                ">=",
            )
        )
    goals.append(
        Goal(
            f"Lathe {params.batch}-entity p50 <= 5.6 ms / 3 (the issue's Feast figure)",
            round(hundred.metric("p50"), 3),
            round(5.6 / 3, 3),
            "ms",
            "<=",
        )
    )
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters={**asdict(params), "data_spec": asdict(spec)},
        comparisons=[
            Comparison(
                "online_one",
                "GetOnlineFeatures, 1 entity x 20 features (5 views)",
                "p99",
                False,
                ["p50", "p90", "p99", "max", "mean"],
                single_variants,
            ),
            Comparison(
                "online_batch",
                f"GetOnlineFeatures, {params.batch} entities x 20 features",
                "p50",
                False,
                ["p50", "p90", "p99", "max", "mean"],
                batch_variants,
            ),
            Comparison(
                "historical",
                f"Training set: {spec.labels:,} label rows x 5 views (bitemporal, TTL)",
                "seconds",
                False,
                ["seconds"],
                historical_variants,
                notes=[
                    "Lathe includes uploading the labels as Arrow, the join, and streaming "
                    f"{historical[-1][1]:,} rows back."
                ],
            ),
        ],
        goals=goals,
        notes=notes,
    )


GOALS = (
    GoalSpec(
        issue=10,
        description="GetOnlineFeatures 1 entity x 20 p99 vs raw gRPC echo + asyncpg key lookup "
        "p99; no worse than before",
        figure="online_one/lathe_one/p99",
        baseline=("online_one/raw_grpc_echo/p99", "online_one/raw_pk_read/p99"),
        comparator="<=",
        threshold=1.3,
    ),
    GoalSpec(
        issue=10,
        description="GetOnlineFeatures 100 entities p99, next to a raw call with as large a reply",
        figure="online_batch/lathe_batch/p99",
        baseline=("online_batch/raw_grpc_reply_sized/p99",),
        compare=Compare.VALUE,
        comparator="<=",
        threshold=2.0,
        unit="ms",
    ),
    GoalSpec(
        issue=10,
        description="GetOnlineFeatures 100 entities p50 vs the issue's Feast figure (5.6 ms / 3)",
        figure="online_batch/lathe_batch/p50",
        compare=Compare.VALUE,
        comparator="<=",
        threshold=round(5.6 / 3, 3),
        unit="ms",
    ),
    GoalSpec(
        issue=10,
        description="Feast feature server HTTP p99 / Lathe 1-entity p99",
        figure="online_one/lathe_one/p99",
        baseline=("online_one/feast_http/p99",),
        compare=Compare.SPEEDUP,
        comparator=">=",
        threshold=2.0,
    ),
    GoalSpec(
        issue=10,
        description="Feast in-process 100-entity p50 / Lathe 100-entity p50",
        figure="online_batch/lathe_batch/p50",
        baseline=("online_batch/feast_inprocess/p50",),
        compare=Compare.SPEEDUP,
        comparator=">=",
        threshold=3.0,
    ),
    GoalSpec(
        issue=10,
        description="GetHistoricalFeatures (warm), 1M labels x 5 views vs DuckDB's ASOF join",
        figure="historical/lathe_warm/seconds",
        baseline=("historical/duckdb_asof/seconds",),
        comparator="<=",
        threshold=3.0,
    ),
    GoalSpec(
        issue=11,
        description="Online read of a LAST_N(50) sequence feature p99 vs today's scalar read p99",
        figure="online_read/last_n/p99",
        baseline=("online_read/scalar/p99",),
        measured_by="features.sequences",
    ),
    GoalSpec(
        issue=11,
        description="Training set with a sequence feature, 1M labels vs DuckDB's ASOF join of the "
        "scalar columns",
        figure="training_set/lathe_last_n/seconds",
        baseline=("training_set/duckdb_asof/seconds",),
        comparator="<=",
        threshold=3.0,
        measured_by="features.sequences",
    ),
)

FAMILY = Family(
    name="features.serving",
    summary="GetOnlineFeatures and GetHistoricalFeatures vs raw gRPC + asyncpg, Feast and DuckDB",
    params=FeaturesParams,
    run=run,
    quick={
        "entities": 2000,
        "rows_per_entity": 5,
        "labels": 20_000,
        "samples": 300,
        "batch_samples": 100,
        "warmup": 50,
        "feast": False,
    },
    goals=GOALS,
)
