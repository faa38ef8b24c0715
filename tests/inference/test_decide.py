"""Decide: a policy's distribution, a replayable draw with its propensity, logged decisions
with everything off-policy evaluation needs; refusals that say what to fix."""

from __future__ import annotations

import json
import uuid

import grpc
import numpy as np
import pytest

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.decisioning.draw import draw
from libs.decisioning.spec import Softmax
from libs.sdk.inference import InferenceClient, PredictRow
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    register,
    row,
    serving_version,
    set_alias,
)
from tests.inference.policy_world import legacy_onnx, logging_spec, register_policy, spec

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _decide(inference, name: str, rows: list[m.PredictionInput]) -> rr.DecideResponse:  # type: ignore[no-untyped-def]
    return await inference.Decide(rr.DecideRequest(model_name=name, rows=rows), timeout=10)  # type: ignore[no-any-return]


async def test_decide_draws_from_the_logged_distribution_and_logs_what_ope_needs(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    name = f"line-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    policy = logging_spec(name, epsilon=0.3)
    version = await register_policy(registry, credit, name, legacy_onnx(credit), policy)
    await set_alias(registry, name, "production", version)
    async with start_inference(name) as inference:
        await eventually(lambda: _serving(inference, name, version), what="policy serving")
        ids = [f"d-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
        rows = [row(credit.loan_ids[i % 20], decision_id=ids[i]) for i in range(40)]
        rows[0].eligible_actions.extend(["decline", "line_50"])
        answer = await _decide(inference, name, rows)
        assert list(answer.action_names) == ["decline", "line_50", "line_100", "line_150"]
        p = np.array([list(d.probabilities) for d in answer.decisions])
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
        assert p[0, 2] == p[0, 3] == 0.0  # ineligible
        # epsilon-greedy with k = 4: the best 1 - 0.3 + 0.075, the others 0.075.
        assert sorted(set(np.round(p[1:].ravel(), 12))) == [0.075, 0.775]
        # The action is the inverse CDF at hash(decision id, salt): anyone can replay it.
        columns, propensities = draw(p, ids, policy.salt)
        assert [d.action for d in answer.decisions] == [answer.action_names[c] for c in columns]
        assert [d.propensity for d in answer.decisions] == propensities.tolist()
        assert all(d.logged and d.model_version == version for d in answer.decisions)
        again = await _decide(inference, name, rows[:5])
        assert [d.action for d in again.decisions] == [d.action for d in answer.decisions[:5]]
        # The SDK: the same decision for the same id, the distribution by action name.
        sdk = await InferenceClient(inference).decide(
            name, [PredictRow({"loan_id": credit.loan_ids[1]}, {"requested_amount": 12000.0},
                              decision_id=ids[1])],
        )  # fmt: skip
        assert sdk.rows[0].action == answer.decisions[1].action
        assert sdk.rows[0].probabilities[sdk.rows[0].action] == sdk.rows[0].propensity
        assert sdk.rows[0].arm == "primary" and sdk.rows[0].logged

        # Logged: every decision with its distribution, policy and context.
        async def listed() -> list[rr.LoggedDecision]:
            page = await inference.ListDecisions(
                rr.ListDecisionsRequest(
                    model_name=name, reward_definition="margin", reward_definition_version=1
                )
            )
            return list(page.decisions)

        await eventually(lambda: _count(listed, 40), what="decisions logged")
        logged = {d.decision.decision_id: d for d in await listed()}
        first = logged[ids[0]]
        assert first.reward_status == m.REWARD_STATUS_PENDING
        log = first.decision
        assert list(log.eligible_actions) == ["decline", "line_50"]
        assert list(log.action_probabilities) == list(answer.decisions[0].probabilities)
        assert log.chosen_action == answer.decisions[0].action
        assert log.propensity == answer.decisions[0].propensity
        assert log.policy_salt == policy.salt and log.policy_name == name
        assert json.loads(log.exploration_json) == {"epsilon": 0.3, "kind": "epsilon_greedy"}
        assert len(log.policy_spec_sha256) == 64
        assert log.feature_service == credit.feature_service and log.feature_service_version
        assert len(log.feature_values) == len(credit.features) == len(log.feature_event_times)
        assert log.sample_rate == 1.0 and log.arm == m.ARM_PRIMARY and log.arm_share == 1.0

        # Paging walks every decision once.
        seen: list[str] = []
        token = ""
        while True:
            page = await inference.ListDecisions(
                rr.ListDecisionsRequest(
                    model_name=name,
                    reward_definition="margin",
                    reward_definition_version=1,
                    page_size=7,
                    page_token=token,
                )
            )
            seen += [d.decision.decision_id for d in page.decisions]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(ids)


async def test_decide_refuses_what_it_cannot_decide(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    name = f"line-{uuid.uuid4().hex[:8]}"
    plain = f"score-{uuid.uuid4().hex[:8]}"
    bad = f"line-{uuid.uuid4().hex[:8]}"
    for model in (name, plain, bad):
        await create_model(registry, model)
    version = await register_policy(registry, credit, name, legacy_onnx(credit), logging_spec(name))
    await set_alias(registry, name, "production", version)
    plain_version = await register(registry, credit, plain, export(credit))
    await set_alias(registry, plain, "production", plain_version)
    # A policy.json whose floor is past 1/4: every action cannot get it.
    invalid = spec(bad, Softmax(1.0, floor=0.2), "s")
    text = json.loads(invalid.to_json())
    text["exploration"]["floor"] = 0.3
    bad_version = await register_policy(
        registry, credit, bad, legacy_onnx(credit), json.dumps(text).encode()
    )
    await set_alias(registry, bad, "production", bad_version)
    async with start_inference(name, plain, bad) as inference:
        await eventually(lambda: _serving(inference, name, version), what="policy serving")
        await eventually(lambda: _serving(inference, plain, plain_version), what="model serving")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _decide(inference, plain, [row(credit.loan_ids[0])])
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not a policy" in (caught.value.details() or "")
        unknown = row(credit.loan_ids[0])
        unknown.eligible_actions.append("line_999")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _decide(inference, name, [unknown])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "unknown action 'line_999'" in (caught.value.details() or "")

        async def refused() -> bool:
            d = (await inference.GetDeployment(rr.GetDeploymentRequest(model_name=bad))).deployment
            return d.state == m.DEPLOYMENT_STATE_FAILED

        await eventually(refused, what="the invalid policy refused")
        d = (await inference.GetDeployment(rr.GetDeploymentRequest(model_name=bad))).deployment
        assert d.failure.stage == "load" and "exploration.floor" in d.failure.reason
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await inference.ListDecisions(rr.ListDecisionsRequest(model_name=name))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _serving(inference, name: str, version: int) -> bool:  # type: ignore[no-untyped-def]
    return await serving_version(inference, name) == version


async def _count(listed, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await listed()) >= n


async def test_decisions_whose_logs_are_dropped_are_not_reported_logged(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    """A full log buffer drops a request's logs; the caller must hear so, or it publishes
    outcomes for decisions that were never logged (refused as unknown_decision)."""
    name = f"line-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    version = await register_policy(
        registry, credit, name, legacy_onnx(credit), logging_spec(name, epsilon=0.3)
    )
    await set_alias(registry, name, "production", version)
    async with start_inference(name, log_buffer=3, decision_log_sample_rate=1.0) as inference:
        await eventually(lambda: _serving(inference, name, version), what="policy serving")
        rows = [row(credit.loan_ids[i], decision_id=f"d-{uuid.uuid4().hex}") for i in range(5)]

        too_many = await _decide(inference, name, rows)
        fits = await _decide(inference, name, rows[:1])

    assert [d.logged for d in too_many.decisions] == [False] * 5
    assert [d.logged for d in fits.decisions] == [True]
