"""``decisioning.decide``: Decide next to Predict of the same policy, at batch 1, one run.

Processes as ``lathe up`` starts them: a feature store, a model registry and an inference
service (one process, batching on, 1% of new traces recorded). The model is a policy over
the bench's loans (four credit-line tiers, ``tests/inference/policy_world.py``'s legacy
scorer, epsilon-greedy 0.3) with ``policy.json``. Predict and Decide of one row (with its
online features) alternate every ``chunk`` calls. Predict of a policy also draws its
action; Decide adds the whole distribution to the reply and logs every decision (the
decision log rate is 1, Predict's 1%): the difference is what a logged decision costs.
Goal (issue 14): Decide p99 <= 1.1 x Predict p99.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc

from bench.families import Family
from bench.harness import BenchContext, LatencyStats
from bench.results import Comparison, FamilyResult, Goal, Role
from bench.service_process import (
    free_port,
    interleaved,
    measurement,
    process,
    run_env,
    wait_serving,
)
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from tests.inference.helpers import create_model, make_credit, row, set_alias
from tests.inference.policy_world import legacy_onnx, logging_spec, register_policy

NAME = "bench-credit-line"


@dataclass(frozen=True)
class DecideParams:
    loans: int = 2000
    samples: int = 2000
    warmup: int = 100
    chunk: int = 100
    decision_log_rate: float = 1.0
    """LATHE_INFERENCE_DECISION_LOG_SAMPLE_RATE (1: every decision, what OPE wants)."""


async def run(context: BenchContext, params: DecideParams) -> FamilyResult:
    addrs = {name: f"127.0.0.1:{free_port()}" for name in ("fs", "reg", "inf")}
    with tempfile.TemporaryDirectory(prefix="lathe-bench-decide-") as home:
        env = run_env(
            context,
            home,
            LATHE_FEATURE_STORE_ADDR=addrs["fs"],
            LATHE_MODEL_REGISTRY_ADDR=addrs["reg"],
            LATHE_INFERENCE_ADDR=addrs["inf"],
            LATHE_INFERENCE_LOG_SAMPLE_RATE="0.01",
            LATHE_INFERENCE_DECISION_LOG_SAMPLE_RATE=str(params.decision_log_rate),
            LATHE_TRACE_SAMPLE_RATIO="0.01",
        )
        logs = Path(home)
        async with (
            context.pool(max_size=4) as pool,
            process(["-m", "services.feature_store"], env, logs / "fs.log"),
            process(["-m", "services.model_registry"], env, logs / "reg.log"),
        ):
            await wait_serving(addrs["fs"])
            await wait_serving(addrs["reg"])
            async with (
                grpc.aio.insecure_channel(addrs["fs"]) as fs_channel,
                grpc.aio.insecure_channel(addrs["reg"]) as reg_channel,
            ):
                registry = ModelRegistryStub(reg_channel)
                credit = await make_credit(FeatureStoreStub(fs_channel), pool, rows=params.loans)
                await create_model(registry, NAME)
                version = await register_policy(
                    registry, credit, NAME, legacy_onnx(credit), logging_spec(NAME)
                )
                await set_alias(registry, NAME, "production", version)
            async with (
                process(["-m", "services.inference"], env, logs / "inf.log"),
                grpc.aio.insecure_channel(addrs["inf"]) as channel,
            ):
                await wait_serving(addrs["inf"])
                stub = InferenceStub(channel)
                await _until_warm(stub)
                loans = credit.loan_ids
                predict = rr.PredictRequest(model_name=NAME, rows=[row(loans[0])])
                counter = iter(range(10**9))

                def decide_request() -> rr.DecideRequest:
                    # A fresh decision id per call (as callers send): each one is logged.
                    return rr.DecideRequest(
                        model_name=NAME, rows=[row(loans[0], decision_id=f"b-{next(counter)}")]
                    )

                steady = (
                    await interleaved(
                        {
                            "predict": lambda: stub.Predict(predict),
                            "decide": lambda: stub.Decide(decide_request()),
                        },
                        samples=params.samples,
                        warmup=params.warmup,
                        chunk=params.chunk,
                    )
                ).steady
    p99 = {k: LatencyStats.from_ns(v).p99 for k, v in steady.items()}
    comparison = Comparison(
        key="decide_batch1",
        title="Decide vs Predict of the same policy, batch 1 with online features",
        headline="p99",
        higher_is_better=False,
        columns=["p50", "p99"],
        variants=[
            measurement("predict", "Predict (policy, 1% logged)", Role.BASELINE, steady["predict"]),
            measurement(
                "decide", "Decide (distribution, every decision logged)", Role.LATHE,
                steady["decide"],
            ),
        ],
    )  # fmt: skip
    goal = Goal(
        description="Decide p99 / Predict p99 at batch 1",
        measured=p99["decide"] / p99["predict"],
        target=1.1,
        unit="x",
        comparator="<=",
    )
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=[comparison],
        goals=[goal],
    )


async def _until_warm(stub: InferenceStub) -> None:
    import asyncio

    for _ in range(1200):
        try:
            answer = await stub.GetDeployment(rr.GetDeploymentRequest(model_name=NAME))
            if answer.deployment.warm:
                return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{NAME} never became warm")


FAMILY = Family(
    name="decisioning.decide",
    summary="Decide (distribution + logged decision) vs Predict of the same policy, batch 1",
    params=DecideParams,
    run=run,
    quick={"loans": 300, "samples": 300, "warmup": 30, "chunk": 50},
)
