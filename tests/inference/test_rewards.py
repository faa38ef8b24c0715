"""Outcomes on lathe.ingest.outcomes join their decisions exactly once; what cannot join
is refused with its reason, recorded and counted once."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import asyncpg
import pytest
from nats.js import JetStreamContext

from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from services.inference.store.decisions import insert_decisions
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    inference_events,
    row,
    serving_version,
    set_alias,
)
from tests.inference.policy_world import legacy_onnx, logging_spec, register_policy

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_rewards_join_once_and_every_refusal_is_recorded(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    test_settings: LatheSettings,
    js: JetStreamContext,
    db_pool: asyncpg.Pool,
) -> None:
    name = f"line-{uuid.uuid4().hex[:8]}"
    definition = f"margin_{uuid.uuid4().hex[:6]}"
    await create_model(registry, name)
    version = await register_policy(registry, credit, name, legacy_onnx(credit), logging_spec(name))
    await set_alias(registry, name, "production", version)
    subject = f"{test_settings.namespace}.ingest.outcomes"
    windows = f"{definition}@1=3600,{definition}@2=7200"
    async with start_inference(name, reward_windows=windows) as inference:

        async def serving() -> bool:
            return await serving_version(inference, name) == version

        await eventually(serving, what="policy serving")
        ids = [f"r-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
        answer = await inference.Decide(
            rr.DecideRequest(
                model_name=name,
                rows=[row(credit.loan_ids[i], decision_id=d) for i, d in enumerate(ids)],
            ),
            timeout=10,
        )
        assert len(answer.decisions) == 6

        async def page(version_: int = 1) -> dict[str, rr.LoggedDecision]:
            listed = await inference.ListDecisions(
                rr.ListDecisionsRequest(
                    model_name=name,
                    reward_definition=definition,
                    reward_definition_version=version_,
                )
            )
            return {d.decision.decision_id: d for d in listed.decisions}

        async def logged() -> bool:
            return len(await page()) == 6

        await eventually(logged, what="decisions logged")
        decided = (await page())[ids[0]].decision.predict_time.ToDatetime()
        # A decision whose window closed an hour ago (as if logged then): CENSORED.
        censored_id = f"old-{uuid.uuid4().hex[:6]}"
        old = ev.PredictionLogged(
            decision_id=censored_id,
            model_name=name,
            model_version=version,
            chosen_action="decline",
            action_probabilities=[1.0, 0, 0, 0],
        )
        old.predict_time.FromDatetime(decided - timedelta(hours=2))
        async with db_pool.acquire() as conn:
            await insert_decisions(conn, [old], [old.SerializeToString()])

        async def censored() -> bool:
            listed = (await page()).get(censored_id)
            return listed is not None and listed.reward_status == m.REWARD_STATUS_CENSORED

        await eventually(censored, what="the old decision listed as censored")
        at = decided.replace(tzinfo=None).isoformat() + "Z"

        def outcome(decision_id: str, reward: float, *, when: timedelta = timedelta(minutes=5),
                    version_: int = 1) -> bytes:  # fmt: skip
            return json.dumps(
                {
                    "decision_id": decision_id,
                    "reward": reward,
                    "reward_time": (decided + when).isoformat() + "Z",
                    "reward_definition": definition,
                    "reward_definition_version": version_,
                }
            ).encode()

        sent: list[str] = []  # outcome ids: other tests' malformed refusals are not ours

        async def publish(data: bytes, msg_id: str | None = None) -> None:
            sent.append(msg_id or str(uuid.uuid4()))
            await js.publish(subject, data, headers={"Nats-Msg-Id": sent[-1]})

        await publish(outcome(ids[0], 1.5), "11111111-1111-4111-8111-111111111111")
        # The same message again (a producer's retry): deduplicated, not a duplicate reward.
        await publish(outcome(ids[0], 1.5), "11111111-1111-4111-8111-111111111111")
        # Another message for the same decision and definition: a duplicate, the first stands.
        await publish(outcome(ids[0], -9.0))
        await publish(outcome("never-decided", 1.0))
        await publish(outcome(ids[1], 2.0, when=timedelta(hours=2)))  # past the 1 h window
        await publish(outcome(ids[2], 2.0, when=timedelta(minutes=-5)))  # before the decision
        await publish(b'{"decision_id": "x"}')
        await publish(b"not json at all")
        # Stamped inside the censored decision's window but published after it closed: the
        # decision stays CENSORED.
        await publish(outcome(censored_id, 3.0, when=timedelta(hours=-1, minutes=-55)))
        await publish(outcome(ids[3], 0.25))
        # A second definition (version 2) joins the same decision separately.
        await publish(outcome(ids[3], 7.0, version_=2, when=timedelta(seconds=0.5)))

        expected = {
            "duplicate": 1,
            "unknown_decision": 1,
            "past_window": 1,
            "before_decision": 1,
            "malformed": 2,
            "arrived_late": 1,
        }

        async def settled() -> bool:
            counts = await db_pool.fetchval(
                "SELECT count(*) FROM inference.reward_refusals WHERE outcome_id = ANY($1)", sent
            )
            return (
                counts >= sum(expected.values())
                and (
                    await db_pool.fetchval(
                        "SELECT count(*) FROM inference.rewards WHERE definition = $1", definition
                    )
                )
                == 3
            )

        await eventually(settled, what="outcomes handled")
        await asyncio.sleep(0.5)  # anything more (it must not come) would land now
        by_reason = dict(
            await db_pool.fetch(
                "SELECT reason, count(*) FROM inference.reward_refusals "
                "WHERE outcome_id = ANY($1) GROUP BY reason",
                sent,
            )
        )
        assert by_reason == expected
        joined = await page()
        assert joined[ids[0]].reward_status == m.REWARD_STATUS_JOINED
        assert joined[ids[0]].reward == 1.5  # the first stands
        assert joined[ids[3]].reward == 0.25
        assert joined[ids[1]].reward_status == m.REWARD_STATUS_PENDING  # window still open
        assert joined[ids[2]].reward_status == m.REWARD_STATUS_PENDING
        assert joined[censored_id].reward_status == m.REWARD_STATUS_CENSORED  # stays so
        second = await page(2)
        assert second[ids[3]].reward == 7.0
        assert second[ids[0]].reward_status == m.REWARD_STATUS_PENDING

        events = await inference_events(db_pool, "RewardJoined")
        mine = [e for e in events if e.reward_definition == definition]  # type: ignore[attr-defined]
        assert sorted((e.decision_id, e.reward_definition_version) for e in mine) == sorted(  # type: ignore[attr-defined]
            [(ids[0], 1), (ids[3], 1), (ids[3], 2)]
        )
        refused = await inference_events(db_pool, "RewardRefused")
        reasons = [r.reason for r in refused if r.reward_definition == definition]  # type: ignore[attr-defined]
        assert sorted(reasons) == sorted(
            k for k, n in expected.items() for _ in range(n) if k != "malformed"
        )
        assert at  # the decision time was read from the log
