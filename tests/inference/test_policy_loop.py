"""The decisioning loop against real services (feature store, registry, inference, trainer):
a policy deployed -> decisions logged with propensities -> rewards published -> a new
policy learned and evaluated -> registered with its estimates -> the registry's gate
refuses a worse policy and accepts the better one -> inference serves it; and the
learned policy's *true* value (known reward) beats the logging policy's.

The rewards' censoring window is a day, so a window left open at its end (ending a day
before now, where every reward has settled) holds none of these decisions and is refused;
the jobs read explicit windows. One that reaches the probe decisions (no rewards: still
pending) learns a version the gate refuses whatever its estimates.

Rewards are the world's expected reward of the decision plus Gaussian noise (sd 0.05),
as a reward definition of "expected margin on the line" would publish; Bernoulli
repayment noise at this test's size (2,000 decisions) would make every interval too wide
to show anything but noise (docs/adr/0024).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import numpy as np
import pytest
from nats.js import JetStreamContext

from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2 as tm
from lathe.trainer.v1 import request_response_pb2 as trr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings, ServiceName
from libs.decisioning.gate import PENDING_METRIC
from libs.decisioning.spec import EpsilonGreedy
from services.trainer.service import SPEC as TRAINER
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import Credit, eventually, row, serving_version
from tests.inference.policy_world import (
    legacy_onnx,
    logging_spec,
    make_world,
    register_policy,
    spec,
)
from tests.support.cli import run_lathe
from tests.support.hosting import hosted

pytestmark = pytest.mark.asyncio(loop_scope="session")
DECISIONS = 2000
DEFINITION = "expected_margin"


async def test_a_learned_policy_is_gated_on_its_estimates_and_beats_the_logging_policy(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    test_settings: LatheSettings,
    js: JetStreamContext,
    db_pool: asyncpg.Pool,
) -> None:
    world = make_world(credit)
    loans = len(credit.loan_ids)
    name = f"line-{uuid.uuid4().hex[:8]}"
    gate = reg.PromotionPolicy(
        protected_aliases=[
            reg.ProtectedAlias(
                alias="production", policy_value_gates=[reg.PolicyValueGate(margin=0.005)]
            )
        ]
    )
    await registry.CreateModel(reg_rr.CreateModelRequest(name=name, owner="risk", policy=gate))
    v1 = await register_policy(registry, credit, name, legacy_onnx(credit), logging_spec(name))
    await registry.SetAlias(reg_rr.SetAliasRequest(model_name=name, alias="production", version=v1))

    async with (
        start_inference(name, reward_windows=f"{DEFINITION}@1=86400") as inference,
        hosted(TRAINER, test_settings),
        grpc.aio.insecure_channel(test_settings.service_addr(ServiceName.TRAINER)) as channel,
    ):
        trainer = TrainerStub(channel)

        async def serving(version: int) -> bool:
            return await serving_version(inference, name) == version

        await eventually(lambda: serving(v1), what="v1 serving")
        logging_value = world.true_value(await _distributions(inference, name, credit, world))
        begun = datetime.now(UTC)  # after the probe's decisions, which get no reward

        # 1. Decisions, logged with their propensities.
        made: dict[str, tuple[int, str]] = {}
        for start in range(0, DECISIONS, 200):
            ids = [f"e2e-{i}-{uuid.uuid4().hex[:6]}" for i in range(start, start + 200)]
            rows = [
                row(credit.loan_ids[i % loans], float(world.amounts[i % loans]), ids[i - start])
                for i in range(start, start + 200)
            ]
            answer = await inference.Decide(rr.DecideRequest(model_name=name, rows=rows))
            for i, d in zip(range(start, start + 200), answer.decisions, strict=True):
                made[d.decision_id] = (i % loans, d.action)

        async def decide_times() -> dict[str, object]:
            out, token = {}, ""
            while True:
                page = await inference.ListDecisions(
                    rr.ListDecisionsRequest(
                        model_name=name,
                        reward_definition=DEFINITION,
                        reward_definition_version=1,
                        page_size=5000,
                        page_token=token,
                    )
                )
                out.update({d.decision.decision_id: d for d in page.decisions})
                token = page.next_page_token
                if not token:
                    return out

        async def all_logged() -> bool:
            return set(made) <= set(await decide_times())

        await eventually(all_logged, what="decisions logged")

        # 2. Rewards, published as product systems would.
        rng = np.random.default_rng(7)
        logged = await decide_times()
        subject = f"{test_settings.namespace}.ingest.outcomes"
        names = [a.name for a in spec(name, EpsilonGreedy(0.0), "x").actions]
        for decision_id, (loan, action) in made.items():
            decided = logged[decision_id].decision.predict_time.ToDatetime()
            reward = world.expected[loan, names.index(action)] + rng.normal(0.0, 0.05)
            outcome = {
                "decision_id": decision_id,
                "reward": float(reward),
                "reward_time": (decided + timedelta(minutes=1)).isoformat() + "Z",
                "reward_definition": DEFINITION,
                "reward_definition_version": 1,
            }
            await js.publish(subject, json.dumps(outcome).encode())

        async def all_joined() -> bool:
            joined = await db_pool.fetchval(
                "SELECT count(*) FROM inference.rewards WHERE model_name = $1",
                name,
            )
            return bool(joined == DECISIONS)

        await eventually(all_joined, timeout_s=60, what="rewards joined")

        # 3. A window left open at its end ends a censoring window (a day) before now:
        # none of these decisions' rewards has settled by then, and the job says so.
        settled = tm.DecisionLogWindow(reward_definition=DEFINITION, reward_definition_version=1)
        with pytest.raises(grpc.aio.AioRpcError) as unsettled:
            await trainer.EvaluatePolicy(
                trr.EvaluatePolicyRequest(model_name=name, version=v1, logs=settled), timeout=60
            )
        assert unsettled.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "has its reward settled" in (unsettled.value.details() or "")

        # 4. Learn from the rewards arrived so far (explicit ends). Reaching back to the
        # probe, whose decisions await their reward, leaves those out and counts them.
        so_far = tm.DecisionLogWindow(reward_definition=DEFINITION, reward_definition_version=1)
        so_far.end_time.FromDatetime(datetime.now(UTC))
        rewarded = tm.DecisionLogWindow()
        rewarded.CopyFrom(so_far)
        rewarded.start_time.FromDatetime(begun)

        async def learn(
            logs: tm.DecisionLogWindow, epsilon: float, salt: str, request_id: str = ""
        ) -> trr.LearnPolicyResponse:
            policy = spec(name, EpsilonGreedy(epsilon), f"{name}-{salt}").to_json().decode()
            request = trr.LearnPolicyRequest(
                model_name=name, logs=logs, policy_json=policy, seed=1, request_id=request_id
            )
            return await trainer.LearnPolicy(request, timeout=300)

        early = await learn(so_far, 0.05, "v2", f"learn-{name}")
        # A retry (its reply lost) registers nothing more: it gets the first call's version.
        retried = await learn(so_far, 0.05, "v2", f"learn-{name}")
        assert retried.version == early.version
        assert early.evaluation.excluded_pending >= loans  # the probe above: no rewards
        better = await learn(rewarded, 0.05, "v3")
        worse = await learn(rewarded, 1.0, "v4")
        assert better.evaluation.excluded_pending == 0
        estimates = {e.estimator: e for e in better.evaluation.estimates}
        assert set(estimates) == {"ips", "snips", "dr", "dm", "logging", "dr_gain"}
        assert better.evaluation.production_version == v1
        assert better.evaluation.rows == round(DECISIONS * 0.3)
        version = (
            await registry.GetModelVersion(
                reg_rr.GetModelVersionRequest(model_name=name, version=better.version)
            )
        ).model_version
        assert version.metrics["ope.dr.value"] == estimates["dr"].value
        assert version.metrics["opl.logging_version"] == v1
        assert version.metrics[PENDING_METRIC] == 0
        assert {a.name for a in version.artifacts} >= {"model.onnx", "policy.json"}

        # The OPE job on a registered version (what `lathe policies evaluate` shows).
        evaluated = await trainer.EvaluatePolicy(
            trr.EvaluatePolicyRequest(model_name=name, version=better.version, logs=rewarded),
            timeout=300,
        )
        assert evaluated.evaluation.rows == DECISIONS
        code, output = await run_lathe(
            test_settings,
            "policies",
            "evaluate",
            name,
            "--version",
            str(better.version),
            "--logs",
            f"{begun.isoformat()}..{so_far.end_time.ToJsonString()}",
            "--reward",
            f"{DEFINITION}@1",
        )
        assert code == 0, output
        for label in ("IPS", "SNIPS", "DR", "logging policy (realised)", "95% interval"):
            assert label in output, output
        assert "warning" not in output, output
        print(output)

        # 5. The gate refuses the version learned beside pending rewards, and the worse
        # policy, and accepts the better one.
        async def promote(version: int) -> None:
            await registry.SetAlias(
                reg_rr.SetAliasRequest(
                    model_name=name, alias="production", version=version, expected_version=v1
                )
            )

        for refused_version, words in (
            (early.version, "awaiting their reward"),
            (worse.version, "below the margin"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await promote(refused_version)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert words in (refused.value.details() or "")
        await promote(better.version)

        # 6. Inference serves it, and its true value beats the logging policy's.
        await eventually(lambda: serving(better.version), what="the learned policy serving")
        learned_value = world.true_value(await _distributions(inference, name, credit, world))
        print(
            f"true values: logging {logging_value:.4f}, learned {learned_value:.4f}; "
            f"DR {estimates['dr'].value:.4f} [{estimates['dr'].lower:.4f}, "
            f"{estimates['dr'].upper:.4f}], logging {estimates['logging'].value:.4f}"
        )
        assert learned_value > logging_value + 0.01


async def _distributions(inference, name: str, credit: Credit, world) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Every loan's distribution under the serving version (via Decide itself)."""
    rows = [
        row(loan, float(world.amounts[i]), f"probe-{uuid.uuid4().hex}")
        for i, loan in enumerate(credit.loan_ids)
    ]
    answer = await inference.Decide(rr.DecideRequest(model_name=name, rows=rows), timeout=30)
    return np.array([list(d.probabilities) for d in answer.decisions])
