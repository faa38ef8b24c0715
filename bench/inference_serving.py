"""``inference.serving``: Predict over gRPC against its building blocks, in one run.

Processes as ``lathe up`` starts them: a feature store, a model registry, an inference
service with batching and one without (same settings otherwise, ``processes`` server
processes each sharing the port as ``LATHE_INFERENCE_PROCESSES`` runs them), and a raw
gRPC echo. All services record 1% of new traces, as ``features.serving`` runs them (a
production-like setting; the development default records every call). Models: the
trainer's MLP and FT-Transformer families (untrained, exported the way the trainer
exports them), registered with their preprocessing and promoted to production.

1. Batch 1 with online features: Predict's p50/p99 next to a raw echo of the same
   request bytes, the same GetOnlineFeatures call Predict makes, and ONNX Runtime run
   in process on one row (a session configured as the service configures its own: one
   intra-op thread, no spinning); goal: Predict p50 <= 1.3 x the sum of the three p50s.
2. 1, 8 and 64 concurrent single-row clients for ``duration_s`` each: p95 and
   throughput, batched vs unbatched (and the raw echo's throughput at 64 clients). The
   clients share ``channels`` connections (each its own, so the kernel can spread them
   over the server processes), the same for every variant.
3. 256-row requests: rows/s against in-process ONNX Runtime at batch 256, with the other
   building blocks of such a request beside it (GetOnlineFeatures of the same 256
   entities, a raw echo of the request's bytes, the preprocessing + ONNX Runtime in
   process) as diagnostics.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from bench.echo_server import ECHO_METHOD
from bench.families import Family
from bench.goals import GoalSpec
from bench.harness import BenchContext, LatencyStats
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role, Value
from bench.service_process import (
    free_port,
    interleaved,
    measurement,
    process,
    run_env,
    wait_serving,
)
from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fsr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.preprocessing import PreprocessingSpec, Preprocessor
from services.inference.runtimes.onnx_cpu import OnnxCpuRuntime
from tests.inference.helpers import (
    Credit,
    create_model,
    export,
    make_credit,
    register,
    row,
    set_alias,
)

FAMILIES = ("mlp", "ft_transformer")


@dataclass(frozen=True)
class InferenceParams:
    loans: int = 2000
    samples: int = 1000
    warmup: int = 100
    chunk: int = 100
    duration_s: float = 5.0
    concurrency: tuple[int, ...] = (1, 8, 64)
    big_rows: int = 256
    big_requests: int = 40
    rounds: int = 10
    """Batched and unbatched alternate in this many rounds of ``duration_s / rounds`` each
    (ABBA order), so that a shared machine's slow drifts reach both alike."""
    processes: int = 1
    """Inference server processes per service (LATHE_INFERENCE_PROCESSES). One here: the
    client, the feature store and the server already share the 2 cores; a second process
    measured no faster at 64 clients and slower at 1-8 (sequential calls alternate
    between two processes' cold caches). Set 2 where the server has cores of its own."""
    channels: int = 4
    """Client connections the concurrent clients share (per variant)."""


async def _closed_loop(
    call: Callable[[int], Awaitable[object]], clients: int, duration_s: float
) -> tuple[float, list[int]]:
    """(calls per second, latencies in ns) of ``clients`` callers for ``duration_s``."""
    latencies: list[int] = []
    stop = time.perf_counter() + duration_s

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            started = time.perf_counter_ns()
            await call(i)
            latencies.append(time.perf_counter_ns() - started)
            i += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def _alternating(
    calls: dict[str, Callable[[int], Awaitable[object]]],
    clients: int,
    duration_s: float,
    rounds: int,
) -> dict[str, tuple[float, list[int]]]:
    """``_closed_loop`` of each variant in ``rounds`` alternating slices (ABBA...): calls
    per second over all of a variant's slices, and all its latencies."""
    counts = {label: 0 for label in calls}
    seconds = {label: 0.0 for label in calls}
    latencies: dict[str, list[int]] = {label: [] for label in calls}
    order = list(calls)
    for r in range(rounds):
        for label in order if r % 2 == 0 else order[::-1]:
            rate, lat = await _closed_loop(calls[label], clients, duration_s / rounds)
            counts[label] += len(lat)
            seconds[label] += len(lat) / rate if rate else duration_s / rounds
            latencies[label] += lat
    return {label: (counts[label] / seconds[label], latencies[label]) for label in calls}


async def _until_warm(stub: InferenceStub, name: str) -> None:
    for _ in range(1200):
        try:
            answer = await stub.GetDeployment(rr.GetDeploymentRequest(model_name=name))
            if answer.deployment.warm:
                return
        except grpc.aio.AioRpcError:
            pass  # not followed yet
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{name} never became warm")


async def _until_every_process_warm(address: str, families: Sequence[str]) -> None:
    """Every model warm over 16 fresh connections: with two processes behind the port,
    the chance that all 16 reached the same one is 2^-15."""
    channels = _channels(address, 16)
    try:
        for channel in channels:
            for family in families:
                await _until_warm(InferenceStub(channel), f"bench-{family.replace('_', '-')}")
    finally:
        for channel in channels:
            await channel.close()


def _channels(address: str, count: int) -> list[grpc.aio.Channel]:
    """``count`` channels with a connection each (not one shared subchannel), so that
    the server's processes (SO_REUSEPORT) each get some of them."""
    return [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count)
    ]


def _p95(samples: list[int]) -> float:
    return float(np.percentile(np.asarray(samples) / 1e6, 95)) if samples else float("nan")


async def run(context: BenchContext, params: InferenceParams) -> FamilyResult:
    addrs = {name: f"127.0.0.1:{free_port()}" for name in ("fs", "reg", "inf", "unbatched")}
    echo_port = free_port()
    comparisons: list[Comparison] = []
    goals: list[Goal] = []
    with tempfile.TemporaryDirectory(prefix="lathe-bench-inference-") as home:
        env = run_env(
            context,
            home,
            LATHE_FEATURE_STORE_ADDR=addrs["fs"],
            LATHE_MODEL_REGISTRY_ADDR=addrs["reg"],
            LATHE_INFERENCE_ADDR=addrs["inf"],
            LATHE_INFERENCE_LOG_SAMPLE_RATE="0.01",
            LATHE_INFERENCE_PROCESSES=str(params.processes),
            LATHE_TRACE_SAMPLE_RATIO="0.01",
        )
        unbatched_env = {
            **env,
            "LATHE_INFERENCE_ADDR": addrs["unbatched"],
            "LATHE_INFERENCE_BATCHING": "false",
        }
        logs = Path(home)
        async with (
            context.pool(max_size=4) as pool,
            process(["-m", "services.feature_store"], env, logs / "fs.log"),
            process(["-m", "services.model_registry"], env, logs / "reg.log"),
            process(["-m", "bench.echo_server", str(echo_port)], env, logs / "echo.log"),
        ):
            await wait_serving(addrs["fs"])
            await wait_serving(addrs["reg"])
            async with (
                grpc.aio.insecure_channel(addrs["fs"]) as fs_channel,
                grpc.aio.insecure_channel(addrs["reg"]) as reg_channel,
            ):
                features, registry = (
                    FeatureStoreStub(fs_channel),
                    ModelRegistryStub(reg_channel),
                )
                credit = await make_credit(features, pool, rows=params.loans)
                files = {f: export(credit, family=f, seed=1) for f in FAMILIES}
                for family in FAMILIES:
                    name = f"bench-{family.replace('_', '-')}"
                    await create_model(registry, name)
                    version = await register(registry, credit, name, files[family])
                    await set_alias(registry, name, "production", version)
            async with (
                process(["-m", "services.inference"], env, logs / "inf.log"),
                process(["-m", "services.inference"], unbatched_env, logs / "unbatched.log"),
                grpc.aio.insecure_channel(addrs["fs"]) as fs_channel,
                grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
            ):
                await wait_serving(addrs["inf"])
                await wait_serving(addrs["unbatched"])
                pools = {
                    "batched": _channels(addrs["inf"], params.channels),
                    "unbatched": _channels(addrs["unbatched"], params.channels),
                    "echo": _channels(f"127.0.0.1:{echo_port}", params.channels),
                }
                try:
                    stubs = {
                        label: [InferenceStub(c) for c in pools[label]]
                        for label in ("batched", "unbatched")
                    }
                    echoes = [c.unary_unary(ECHO_METHOD) for c in pools["echo"]]
                    features = FeatureStoreStub(fs_channel)
                    echo = echo_channel.unary_unary(ECHO_METHOD)
                    for address in (addrs["inf"], addrs["unbatched"]):
                        await _until_every_process_warm(address, FAMILIES)
                    for family in FAMILIES:
                        name = f"bench-{family.replace('_', '-')}"
                        result = await _family(
                            params,
                            credit,
                            files[family],
                            name,
                            family,
                            stubs,
                            features,
                            echo,
                            echoes,
                        )
                        comparisons.extend(result[0])
                        goals.extend(result[1])
                finally:
                    for channels in pools.values():
                        for channel in channels:
                            await channel.close()
    return FamilyResult(
        name="inference.serving",
        summary="Predict vs raw gRPC echo + GetOnlineFeatures + in-process ONNX Runtime",
        parameters=asdict(params),
        comparisons=comparisons,
        goals=goals,
    )


async def _family(params, credit, files, name, family, stubs, features, echo, echoes):  # type: ignore[no-untyped-def]
    loans = credit.loan_ids
    inference = stubs["batched"][0]
    one = rr.PredictRequest(model_name=name, rows=[row(loans[0])])
    deployment = rr.GetDeploymentRequest(model_name=name)
    payload = one.SerializeToString()
    fs_request = _features_request(credit, loans[:1])
    # The building block the service runs: its own ONNX Runtime configuration.
    session = OnnxCpuRuntime(files[0], threads=1)
    spec = PreprocessingSpec.from_json(files[2])
    preprocessor = Preprocessor(spec)
    encoded = preprocessor.apply({n: credit.train[n][:1] for n in credit.features})
    feeds1 = {"numeric": encoded.numeric, "categorical": encoded.categorical}

    async def ort_one() -> None:
        session.run(feeds1)

    steady = (
        await interleaved(
            {
                "raw_grpc_echo": lambda: echo(payload),
                "get_online_features": lambda: features.GetOnlineFeatures(fs_request),
                "onnxruntime_in_process": ort_one,
                "predict": lambda: inference.Predict(one),
                "get_deployment": lambda: inference.GetDeployment(deployment),
            },
            samples=params.samples,
            warmup=params.warmup,
            chunk=params.chunk,
        )
    ).steady
    parts = {k: LatencyStats.from_ns(v).p50 for k, v in steady.items()}
    floor = parts["raw_grpc_echo"] + parts["get_online_features"] + parts["onnxruntime_in_process"]
    comparisons = [
        Comparison(
            key=f"{family}_batch1",
            title=f"{family}: Predict at batch 1 with online features",
            headline="p50",
            higher_is_better=False,
            columns=["p50", "p99"],
            variants=[
                measurement(
                    "raw_grpc_echo", "raw gRPC echo", Role.BASELINE, steady["raw_grpc_echo"]
                ),
                measurement(
                    "get_online_features",
                    "GetOnlineFeatures",
                    Role.DIAGNOSTIC,
                    steady["get_online_features"],
                ),
                measurement(
                    "onnxruntime_in_process",
                    "ONNX Runtime in process, 1 row",
                    Role.DIAGNOSTIC,
                    steady["onnxruntime_in_process"],
                ),
                measurement("predict", "Predict", Role.LATHE, steady["predict"]),
                measurement(
                    "get_deployment",
                    "GetDeployment (a trivial RPC of the same server)",
                    Role.DIAGNOSTIC,
                    steady["get_deployment"],
                ),
            ],
            notes=[
                f"sum of the three building blocks' p50: {floor:.3f} ms",
                "GetDeployment is the inference server's own floor (kit interceptor, "
                "trace span, deadline) for a call that does no work",
            ],
        )
    ]
    goals = [
        Goal(
            f"{family}: Predict p50 <= 1.3 x (echo + features + ORT) p50",
            parts["predict"] / floor,
            1.3,
            "x",
            "<=",
        )
    ]
    variants: list[Measurement] = []
    throughput: dict[tuple[str, int], float] = {}
    p95: dict[tuple[str, int], float] = {}
    requests = [
        rr.PredictRequest(model_name=name, rows=[row(loans[i % len(loans)])]) for i in range(512)
    ]
    top = max(params.concurrency)
    pool = stubs["batched"]
    for clients in params.concurrency:
        calls: dict[str, Callable[[int], Awaitable[object]]] = {
            label: lambda i, p=stubs[label]: p[i % len(p)].Predict(requests[i % 512])
            for label in ("batched", "unbatched")
        }
        if clients == top:  # the baselines of the goal, in the same alternation
            calls["echo"] = lambda i: echoes[i % len(echoes)](payload)
            calls["get_deployment"] = lambda i: pool[i % len(pool)].GetDeployment(deployment)
        measured = await _alternating(calls, clients, params.duration_s, params.rounds)
        if clients == top:
            echo_rate, echo_lat = measured.pop("echo")
            trivial_rate, trivial_lat = measured.pop("get_deployment")
        for label, (rate, lat) in measured.items():
            throughput[(label, clients)] = rate
            p95[(label, clients)] = _p95(lat)
            variants.append(
                Measurement(
                    f"{label}_{clients}",
                    f"{label}, {clients} clients",
                    Role.LATHE if label == "batched" else Role.DIAGNOSTIC,
                    {
                        "throughput": Value(rate, "calls/s"),
                        "p95": Value(p95[(label, clients)], "ms"),
                    },
                )
            )
    variants.append(
        Measurement(
            "get_deployment_max_clients",
            f"GetDeployment (trivial RPC, same server), {max(params.concurrency)} clients",
            Role.DIAGNOSTIC,
            {"throughput": Value(trivial_rate, "calls/s"), "p95": Value(_p95(trivial_lat), "ms")},
        )
    )
    variants.insert(
        0,
        Measurement(
            "raw_echo_max_clients",
            f"raw gRPC echo, {max(params.concurrency)} clients",
            Role.BASELINE,
            {"throughput": Value(echo_rate, "calls/s"), "p95": Value(_p95(echo_lat), "ms")},
        ),
    )
    comparisons.append(
        Comparison(
            key=f"{family}_concurrency",
            title=f"{family}: concurrent single-row clients, batched vs unbatched",
            headline="throughput",
            higher_is_better=True,
            columns=["throughput", "p95"],
            variants=variants,
            notes=[
                f"inference: {params.processes} server processes per service; clients share "
                f"{params.channels} connections per variant (echo: one process)"
            ],
        )
    )
    low, high = params.concurrency[0], params.concurrency[-1]
    goals.append(
        Goal(
            f"{family}: p95 at {low} client batched <= unbatched",
            p95[("batched", low)],
            p95[("unbatched", low)],
            "ms",
            "<=",
        )
    )
    if family == "ft_transformer":
        goals.append(
            Goal(
                f"{family}: throughput at {high} clients >= 1.5 x unbatched",
                throughput[("batched", high)] / throughput[("unbatched", high)],
                1.5,
                "x",
                ">=",
            )
        )
    else:
        goals.append(
            Goal(
                f"{family}: throughput at {high} clients >= 70% of raw echo",
                throughput[("batched", high)] / echo_rate,
                0.7,
                "x",
                ">=",
            )
        )
    big_comparison, big_goal = await _big_requests(
        params, credit, name, inference, features, echo, session, preprocessor
    )
    comparisons.append(big_comparison)
    goals.append(big_goal)
    return comparisons, goals


async def _big_requests(params, credit, name, inference, features, echo, session, preprocessor):  # type: ignore[no-untyped-def]
    """``big_rows``-row requests against ONNX Runtime at that batch, with the other
    building blocks of such a request as diagnostics."""
    n, count = params.big_rows, params.big_requests
    loans = [credit.loan_ids[i % len(credit.loan_ids)] for i in range(n)]
    big = rr.PredictRequest(model_name=name, rows=[row(loan) for loan in loans])
    big_bytes = big.SerializeToString()
    fs_request = _features_request(credit, loans)
    columns = {
        f: [credit.train[f][i % len(credit.train[f])] for i in range(n)] for f in credit.features
    }
    encoded = preprocessor.apply(columns)
    feeds = {"numeric": encoded.numeric, "categorical": encoded.categorical}
    spec = preprocessor.spec
    numeric = np.column_stack([np.asarray(columns[f.name], float) for f in spec.numeric])
    categorical = [[str(v) for v in columns[c.name]] for c in spec.categorical]

    async def ort_batch() -> None:
        session.run(feeds)

    async def encode_and_ort() -> None:
        batch = preprocessor.encode(numeric, categorical)
        session.run({"numeric": batch.numeric, "categorical": batch.categorical})

    calls = {
        "onnxruntime_in_process": ort_batch,
        "predict": lambda: inference.Predict(big),
        "get_online_features": lambda: features.GetOnlineFeatures(fs_request),
        "raw_grpc_echo": lambda: echo(big_bytes),
        "preprocess_and_ort": encode_and_ort,
    }
    rates = {}
    for key, call in calls.items():
        for _ in range(3):
            await call()
        started = time.perf_counter()
        for _ in range(count):
            await call()
        rates[key] = n * count / (time.perf_counter() - started)
    labels = {
        "onnxruntime_in_process": (f"ONNX Runtime in process, batch {n}", Role.BASELINE),
        "predict": (f"Predict, {n} rows per request", Role.LATHE),
        "get_online_features": (f"GetOnlineFeatures, the same {n} entities", Role.DIAGNOSTIC),
        "raw_grpc_echo": ("raw gRPC echo of the request's bytes", Role.DIAGNOSTIC),
        "preprocess_and_ort": ("preprocessing + ONNX Runtime in process", Role.DIAGNOSTIC),
    }
    blocks = sum(
        1 / rates[k] for k in ("get_online_features", "raw_grpc_echo", "preprocess_and_ort")
    )
    comparison = Comparison(
        key=f"{name.removeprefix('bench-').replace('-', '_')}_rows_{n}",
        title=f"{name.removeprefix('bench-')}: {n}-row requests",
        headline="rows_per_s",
        higher_is_better=True,
        columns=["rows_per_s"],
        variants=[
            Measurement(key, label, role, {"rows_per_s": Value(rates[key], "rows/s")})
            for key, (label, role) in labels.items()
        ],
        notes=[
            "the request's building blocks one after another (features + echo + "
            f"preprocessing and ONNX Runtime): {1 / blocks:,.0f} rows/s; Predict is "
            f"{rates['predict'] * blocks:.2f}x that"
        ],
    )
    goal = Goal(
        f"{name.removeprefix('bench-').replace('-', '_')}: {n}-row rows/s >= 50% of in-process ORT",
        rates["predict"] / rates["onnxruntime_in_process"],
        0.5,
        "x",
        ">=",
    )
    return comparison, goal


def _features_request(credit: Credit, loans: Sequence[str]) -> fsr.GetOnlineFeaturesRequest:
    """The GetOnlineFeatures call Predict makes for rows of ``loans`` (``row``'s amount)."""
    return fsr.GetOnlineFeaturesRequest(
        feature_service=credit.feature_service,
        entities={
            "loan_id": fs.RepeatedValue(values=[fs.Value(string_value=loan) for loan in loans])
        },
        request_data={
            "requested_amount": fs.RepeatedValue(
                values=[fs.Value(float64_value=12000.0) for _ in loans]
            )
        },
    )


def _model_goals(model: str) -> tuple[GoalSpec, ...]:
    """Issue 13's figures for one model family (comparison keys start with its name)."""
    batch1, clients, rows = f"{model}_batch1", f"{model}_concurrency", f"{model}_rows_256"
    blocks = ("raw_grpc_echo", "get_online_features", "onnxruntime_in_process")
    # Goals: p95 never worse at 1 client; at 64, the FT-Transformer >= 1.5x unbatched.
    p95_goals = {1: ("<=", 1.0)}
    throughput_goals = {64: (">=", 1.5)} if model == "ft_transformer" else {}
    concurrency = tuple(
        GoalSpec(
            issue=13,
            description=f"{model}: {metric} at {n} client{'s' if n > 1 else ''}, batched vs "
            "unbatched",
            figure=f"{clients}/batched_{n}/{metric}",
            baseline=(f"{clients}/unbatched_{n}/{metric}",),
            comparator=goals.get(n, (None, None))[0],
            threshold=goals.get(n, (None, None))[1],
        )
        for metric, goals in (("p95", p95_goals), ("throughput", throughput_goals))
        for n in (1, 8, 64)
    )
    return (
        GoalSpec(
            issue=13,
            description=f"{model}: Predict p50, batch 1, vs echo + GetOnlineFeatures + ORT p50",
            figure=f"{batch1}/predict/p50",
            baseline=tuple(f"{batch1}/{b}/p50" for b in blocks),
            comparator="<=",
            threshold=1.3,
        ),
        GoalSpec(
            issue=13,
            description=f"{model}: Predict p99, batch 1, vs echo + GetOnlineFeatures + ORT p99",
            figure=f"{batch1}/predict/p99",
            baseline=tuple(f"{batch1}/{b}/p99" for b in blocks),
            comparator="<=",
            threshold=1.3,
        ),
        *concurrency,
        *(
            ()
            if model == "ft_transformer"
            else (
                GoalSpec(
                    issue=13,
                    description=f"{model}: batched throughput at 64 clients vs the raw gRPC echo's",
                    figure=f"{clients}/batched_64/throughput",
                    baseline=(f"{clients}/raw_echo_max_clients/throughput",),
                    comparator=">=",
                    threshold=0.7,
                ),
            )
        ),
        GoalSpec(
            issue=13,
            description=f"{model}: 256-row requests, rows/s vs in-process ORT at batch 256",
            figure=f"{rows}/predict/rows_per_s",
            baseline=(f"{rows}/onnxruntime_in_process/rows_per_s",),
            comparator=">=",
            threshold=0.5,
        ),
    )


GOALS = (
    *_model_goals("mlp"),
    *_model_goals("ft_transformer"),
    GoalSpec(
        issue=14,
        description="Decide p99 vs Predict p99 at batch 1 (same run)",
        figure="decide_batch1/decide/p99",
        baseline=("decide_batch1/predict/p99",),
        comparator="<=",
        threshold=1.1,
        measured_by="decisioning.decide",
    ),
)

FAMILY = Family(
    name="inference.serving",
    summary="Predict vs raw echo, GetOnlineFeatures and in-process ONNX Runtime",
    params=InferenceParams,
    run=run,
    quick={
        "loans": 300,
        "samples": 100,
        "warmup": 20,
        "chunk": 50,
        "duration_s": 1.0,
        "rounds": 2,
        "big_requests": 5,
    },
    goals=GOALS,
)
