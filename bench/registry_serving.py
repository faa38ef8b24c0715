"""Model registry serving: ResolveAlias and ListModelVersions over gRPC.

The registry runs as its own process exactly as `lathe up` starts it
(``python -m services.model_registry``, telemetry on), against this run's
database and namespace. Baselines, measured in the same run and interleaved in
chunks so machine drift hits every variant alike: a raw grpc.aio echo server in
its own process (the RPC floor) and a raw asyncpg primary-key read of the alias
row (the storage floor). The issue's goal: ResolveAlias p99 <= 1.5x the sum of
the two; ListModelVersions (a page of 100 of 10,000 versions) p99 < 20 ms.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench.echo_server import ECHO_METHOD
from bench.families import Family
from bench.goals import Compare, GoalSpec
from bench.harness import BenchContext
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role
from bench.service_process import (
    free_port,
    interleaved,
    measurement,
    process,
    run_env,
    wait_serving,
)
from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub

_MODEL = "bench-credit-default"


@dataclass(frozen=True)
class RegistryParams:
    versions: int = 10_000
    """Versions registered (through the real API) before measuring."""
    register_concurrency: int = 8
    samples: int = 3000
    """Calls per variant for ResolveAlias and its baselines."""
    warmup: int = 300
    chunk: int = 100
    """Variants alternate every ``chunk`` calls."""
    list_samples: int = 600
    page_size: int = 100
    sampled_ratio: float = 0.01
    """LATHE_TRACE_SAMPLE_RATIO of the second registry (a production-like setting)."""


async def _seed(stub: ModelRegistryStub, params: RegistryParams) -> None:
    await stub.CreateModel(rr.CreateModelRequest(name=_MODEL, owner="bench"))
    signature = message_pb2.Signature(
        inputs=[message_pb2.TensorSpec(name="x", dtype=message_pb2.DATA_TYPE_FLOAT32)]
    )
    artifact = [rr.ArtifactDeclaration(name="model.onnx", format=message_pb2.ARTIFACT_FORMAT_ONNX)]

    async def register(i: int) -> None:
        async def requests() -> AsyncIterator[rr.RegisterModelVersionRequest]:
            meta = rr.ModelVersionMetadata(
                model_name=_MODEL, signature=signature, metrics={"auc": 0.7}, artifacts=artifact
            )
            yield rr.RegisterModelVersionRequest(metadata=meta)
            chunk = rr.ArtifactChunk(name="model.onnx", data=i.to_bytes(8, "big") * 16)
            yield rr.RegisterModelVersionRequest(chunk=chunk)

        await stub.RegisterModelVersion(requests())

    queue = iter(range(params.versions))

    async def worker() -> None:
        for i in queue:
            await register(i)

    await asyncio.gather(*(worker() for _ in range(params.register_concurrency)))
    await stub.SetAlias(
        rr.SetAliasRequest(model_name=_MODEL, alias="production", version=params.versions // 2)
    )


async def run(context: BenchContext, params: RegistryParams) -> FamilyResult:
    registry_addr = f"127.0.0.1:{free_port()}"
    sampled_addr = f"127.0.0.1:{free_port()}"
    echo_port = free_port()
    with tempfile.TemporaryDirectory(prefix="lathe-bench-registry-") as home:
        env = run_env(
            context,
            home,
            LATHE_MODEL_REGISTRY_ADDR=registry_addr,
        )
        sampled_env = {
            **env,
            "LATHE_MODEL_REGISTRY_ADDR": sampled_addr,
            "LATHE_TRACE_SAMPLE_RATIO": str(params.sampled_ratio),
        }
        logs = Path(home)
        async with (
            process(["-m", "services.model_registry"], env, logs / "registry.log"),
            process(["-m", "services.model_registry"], sampled_env, logs / "sampled.log"),
            process(["-m", "bench.echo_server", str(echo_port)], env, logs / "echo.log"),
            grpc.aio.insecure_channel(registry_addr) as registry_channel,
            grpc.aio.insecure_channel(sampled_addr) as sampled_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
            context.pool(max_size=2) as pool,
        ):
            await wait_serving(registry_addr)
            await wait_serving(sampled_addr)
            stub = ModelRegistryStub(registry_channel)
            sampled = ModelRegistryStub(sampled_channel)
            seeded = time.perf_counter()
            await _seed(stub, params)
            seed_s = time.perf_counter() - seeded
            echo = echo_channel.unary_unary(ECHO_METHOD)
            resolve_request = rr.ResolveAliasRequest(model_name=_MODEL, alias="production")
            echo_payload = resolve_request.SerializeToString()
            pk_sql = (
                "SELECT version, traffic_share, updated_at, updated_by FROM model_registry.aliases "
                "WHERE model_name = $1 AND alias = $2"
            )
            resolve = (
                await interleaved(
                    {
                        "raw_grpc_echo": lambda: echo(echo_payload),
                        "raw_pk_read": lambda: pool.fetchrow(pk_sql, _MODEL, "production"),
                        "resolve_alias": lambda: stub.ResolveAlias(resolve_request),
                        "resolve_alias_sampled": lambda: sampled.ResolveAlias(resolve_request),
                    },
                    samples=params.samples,
                    warmup=params.warmup,
                    chunk=params.chunk,
                )
            ).steady
            first_page = await stub.ListModelVersions(
                rr.ListModelVersionsRequest(model_name=_MODEL, page_size=params.page_size)
            )
            deep_token = first_page.next_page_token
            for _ in range(params.versions // params.page_size // 2 - 1):
                deep_token = (
                    await stub.ListModelVersions(
                        rr.ListModelVersionsRequest(
                            model_name=_MODEL, page_size=params.page_size, page_token=deep_token
                        )
                    )
                ).next_page_token
            listing = (
                await interleaved(
                    {
                        "first_page": lambda: sampled.ListModelVersions(
                            rr.ListModelVersionsRequest(
                                model_name=_MODEL, page_size=params.page_size
                            )
                        ),
                        "middle_page": lambda: sampled.ListModelVersions(
                            rr.ListModelVersionsRequest(
                                model_name=_MODEL, page_size=params.page_size, page_token=deep_token
                            )
                        ),
                    },
                    samples=params.list_samples,
                    warmup=params.warmup // 3,
                    chunk=params.chunk,
                )
            ).steady

    echo_m = measurement(
        "raw_grpc_echo", "raw grpc.aio echo (own process)", Role.BASELINE, resolve["raw_grpc_echo"]
    )
    pk_m = measurement(
        "raw_pk_read",
        "raw asyncpg primary-key read of the alias row",
        Role.DIAGNOSTIC,
        resolve["raw_pk_read"],
    )
    resolve_m = measurement(
        "resolve_alias",
        "Lathe ResolveAlias, every call traced (development default)",
        Role.LATHE,
        resolve["resolve_alias"],
    )
    sampled_m = measurement(
        "resolve_alias_sampled",
        f"Lathe ResolveAlias, {params.sampled_ratio:.0%} of new traces recorded",
        Role.LATHE,
        resolve["resolve_alias_sampled"],
    )
    floor_p99 = echo_m.metric("p99") + pk_m.metric("p99")
    floor_p50 = echo_m.metric("p50") + pk_m.metric("p50")
    first_m = measurement(
        "first_page",
        f"ListModelVersions, first page of {params.page_size}",
        Role.LATHE,
        listing["first_page"],
    )
    middle_m = measurement(
        "middle_page",
        f"ListModelVersions, page {params.versions // params.page_size // 2}",
        Role.LATHE,
        listing["middle_page"],
    )

    def vs_floor(m: Measurement) -> str:
        return (
            f"{m.label}: p50 {m.metric('p50') / floor_p50:.2f}x, "
            f"p99 {m.metric('p99') / floor_p99:.2f}x the floor"
        )

    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=[
            Comparison(
                key="resolve_alias",
                title="ResolveAlias vs the floor: a raw gRPC echo + a raw asyncpg PK read",
                headline="p99",
                higher_is_better=False,
                columns=["p50", "p90", "p99", "max", "mean"],
                variants=[echo_m, pk_m, resolve_m, sampled_m],
                notes=[
                    f"{params.samples} sequential calls per variant, alternating every "
                    f"{params.chunk} (each chunk's first call, after a switch, not counted); "
                    f"floor (echo + PK read): p50 {floor_p50:.3f} ms, "
                    f"p99 {floor_p99:.3f} ms.",
                    vs_floor(resolve_m),
                    vs_floor(sampled_m),
                    "Both registries run as `lathe up` starts them (interceptors, spans to "
                    "files); they differ only in LATHE_TRACE_SAMPLE_RATIO.",
                ],
            ),
            Comparison(
                key="list_versions",
                title=f"ListModelVersions: {params.page_size} of {params.versions} versions",
                headline="p99",
                higher_is_better=False,
                columns=["p50", "p90", "p99", "max", "mean"],
                variants=[echo_m, first_m, middle_m],
                notes=[
                    f"Seeding {params.versions} versions through RegisterModelVersion took "
                    f"{seed_s:.1f} s; pages served by the sampled registry."
                ],
            ),
        ],
        goals=[
            Goal(
                "ResolveAlias p99 <= 1.5x (raw gRPC echo p99 + raw asyncpg PK read p99), "
                f"{params.sampled_ratio:.0%} of traces recorded",
                round(sampled_m.metric("p99") / floor_p99, 2),
                1.5,
                "x the floor",
                "<=",
            ),
            Goal(
                "ResolveAlias p99 <= 1.5x the same floor, every call traced",
                round(resolve_m.metric("p99") / floor_p99, 2),
                1.5,
                "x the floor",
                "<=",
            ),
            Goal(
                f"ListModelVersions page of {params.page_size} out of {params.versions} "
                "versions p99 < 20 ms",
                round(max(first_m.metric("p99"), middle_m.metric("p99")), 2),
                20.0,
                "ms",
                "<",
            ),
        ],
    )


_FLOOR = ("resolve_alias/raw_grpc_echo/p99", "resolve_alias/raw_pk_read/p99")

GOALS = (
    GoalSpec(
        issue=10,
        description="ResolveAlias p99 (1% of traces recorded) vs raw gRPC echo + asyncpg PK "
        "read p99; no worse than before",
        figure="resolve_alias/resolve_alias_sampled/p99",
        baseline=_FLOOR,
        comparator="<=",
        threshold=1.5,
    ),
    GoalSpec(
        issue=10,
        description="ResolveAlias p99 (every call traced) vs the same floor; no worse than before",
        figure="resolve_alias/resolve_alias/p99",
        baseline=_FLOOR,
        comparator="<=",
        threshold=1.5,
    ),
    GoalSpec(
        issue=10,
        description="ListModelVersions first page p99; no worse than before",
        figure="list_versions/first_page/p99",
        baseline=("list_versions/raw_grpc_echo/p99",),
        compare=Compare.VALUE,
        comparator="<",
        threshold=20.0,
        unit="ms",
    ),
    GoalSpec(
        issue=10,
        description="ListModelVersions middle page p99; no worse than before",
        figure="list_versions/middle_page/p99",
        baseline=("list_versions/raw_grpc_echo/p99",),
        compare=Compare.VALUE,
        comparator="<",
        threshold=20.0,
        unit="ms",
    ),
)

FAMILY = Family(
    name="registry.serving",
    summary="ResolveAlias and ListModelVersions over gRPC vs a raw gRPC echo + raw asyncpg",
    params=RegistryParams,
    run=run,
    quick={"versions": 1000, "samples": 500, "warmup": 50, "list_samples": 100},
    goals=GOALS,
)
