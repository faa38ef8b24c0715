"""Step: a credit-line policy's loop (issue 14) on the platform.

A logging policy (the legacy scorecard, ε-greedy) is registered and deployed; a slice of
the loans is decided through gRPC ``Decide`` (each decision logged with its propensity
and whole distribution); their rewards, simulated (``credit_lines``), are published on
``<ns>.ingest.outcomes`` and joined once; the trainer learns a new policy from the logs
(``LearnPolicy``) and a deliberately worse one (uniform), each evaluated on the newest
30% of the decisions and registered with its estimates; the registry's policy-value gate
refuses the worse and accepts the learned one; inference serves it, and the simulator
says what the estimates could only estimate: each policy's true value.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
from rich.table import Table

from lathe.inference.v1 import message_pb2 as im
from lathe.inference.v1 import request_response_pb2 as irr
from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from libs.cli.demo.context import ACTOR, FEATURE_SERVICE, DemoRun, Step
from libs.cli.demo.credit_lines import (
    ACTION_NAMES,
    DEFAULT_RATE,
    DTI_LIMIT,
    REWARD_NOISE,
    best_value,
    eligible_actions,
    legacy_onnx,
    lending_club_world,
    rewards,
)
from libs.cli.demo.promotion import attempt, wait_for_deployment
from libs.cli.policies import evaluation_table
from libs.decisioning.simulator import ACTIONS, CreditWorld
from libs.decisioning.spec import EpsilonGreedy, PolicySpec
from libs.messaging import connect_nats
from libs.sdk.inference import PredictRow, RowDecision
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from libs.sdk.policies import LogWindow, PolicyClient

DEFINITION = "expected_margin"
LOGGING_EPSILON = 0.4
LEARNED_EPSILON = 0.05
HOLDOUT = 0.5
"""The newest share of the decisions each learned policy is evaluated on (not learned from)."""
GATE_MARGIN = 0.05
"""Thousands of dollars per decision the learned policy must gain, lower bound above 0."""
DECIDE_ROWS = 200
DUPLICATES = 5
_PATIENCE_S = 60.0


async def decisioning(run: DemoRun) -> None:
    assert run.state is not None
    clock = _Clock()
    name = f"credit-line-{run.run_id}"
    loans = run.loans[: run.options.decisions]
    conn = await asyncpg.connect(run.state.database_url)
    try:
        world = await lending_club_world(conn, loans)
    finally:
        await conn.close()
    run.console.print(
        f"the world: {len(loans):,} loans, tiers {', '.join(ACTION_NAMES)} (margins 14/12/10%); "
        f"default probability from a logistic regression of the loans' real status, "
        f"{DEFAULT_RATE:.0%} on a 1x line; no 1.5x line above {DTI_LIMIT:.0f}% debt-to-income; "
        f"reward {DEFINITION!r} = the decision's expected margin in $1,000s + noise "
        f"(sd {REWARD_NOISE})"
    )

    # 1. The logging policy: the legacy scorecard, ε-greedy, behind a policy-value gate.
    await run.c.registry.CreateModel(
        reg_rr.CreateModelRequest(
            name=name,
            owner="credit-policy",
            description="Credit line tier per Lending Club applicant",
            tags={"domain": "decisioning"},
            policy=reg.PromotionPolicy(
                protected_aliases=[
                    reg.ProtectedAlias(
                        alias="production",
                        policy_value_gates=[reg.PolicyValueGate(margin=GATE_MARGIN)],
                    )
                ]
            ),
        ),
        metadata=[("lathe-actor", ACTOR)],
    )
    logging_spec = _spec(name, LOGGING_EPSILON, 1)
    v1 = await _register_logging_policy(run, name, world, logging_spec)
    await attempt(
        run,
        f"{ACTOR}: {name} production -> v{v1} (legacy scorecard by grade, ε {LOGGING_EPSILON})",
        run.c.registry.SetAlias(
            reg_rr.SetAliasRequest(model_name=name, alias="production", version=v1),
            metadata=[("lathe-actor", ACTOR)],
        ),
        required=True,
    )
    with run.progress("inference follows the policy's alias event", None) as bar:
        await wait_for_deployment(run, "production", v1, bar, model_name=name)

    clock.lap("world_and_deploy")
    # 2. Decisions through Decide, logged with their propensities.
    started = datetime.now(UTC) - timedelta(seconds=1)
    decided = await _decide(
        run,
        name,
        world,
        run.options.decisions,
        f"decide-{run.run_id}",
        "decide through gRPC Decide",
    )
    actions = np.array([ACTION_NAMES.index(d.action) for d in decided])
    logging_probabilities = np.array([[d.probabilities[a] for a in ACTION_NAMES] for d in decided])
    table = Table("tier", "decisions", "share", "mean propensity")
    counts = Counter(d.action for d in decided)
    for action in ACTION_NAMES:
        chosen = [d.propensity for d in decided if d.action == action]
        table.add_row(
            action,
            f"{counts[action]:,}",
            f"{counts[action] / len(decided):.1%}",
            f"{np.mean(chosen):.3f}" if chosen else "-",
        )
    run.console.print(table)
    # Every decision, where the platform logs them all (LATHE_INFERENCE_DECISION_LOG_SAMPLE_RATE).
    sampled = [i for i, d in enumerate(decided) if d.logged]
    ids = [decided[i].decision_id for i in sampled]
    wanted = set(ids)
    downstream = run.downstream
    assert downstream is not None
    await _wait_until(
        run,
        "the downstream subscriber receives the decision logs",
        len(ids),
        lambda: sum(1 for r in downstream.predictions if r.message.decision_id in wanted),
    )
    logged = await _list_decisions(run, name, wanted)
    with_propensity = sum(
        1
        for d in logged.values()
        if 0 < d.decision.propensity <= 1 and len(d.decision.action_probabilities) == 4
    )
    run.console.print(
        f"ListDecisions: {len(logged):,} decisions logged, {with_propensity:,} with their "
        "propensity and whole distribution (plus the features, the policy's digest and salt)"
    )

    clock.lap("decide_and_log")
    # 3. Rewards published as events, joined once.
    assert run.state is not None
    rows = np.arange(len(decided)) % len(loans)
    published = rewards(world, rows[sampled], actions[sampled], seed=14)
    again = set(ids[:DUPLICATES])
    await _publish_rewards(run, ids, published)
    await _wait_until(
        run,
        "inference joins them (lathe.inference.reward.joined)",
        len(ids) + len(again),
        lambda: sum(
            1
            for r in downstream.rewards
            if (r.event_type == "RewardJoined" and r.message.model_name == name)
            or (r.message.decision_id in again and getattr(r.message, "reason", "") == "duplicate")
        ),
    )
    refused = sum(
        1
        for r in downstream.rewards
        if r.event_type == "RewardRefused" and r.message.decision_id in again
    )
    listed = await _list_decisions(run, name, wanted)
    joined = {k: d for k, d in listed.items() if d.reward_status == im.REWARD_STATUS_JOINED}
    first_stands = all(
        i in joined and abs(joined[i].reward - r) < 1e-9
        for i, r in zip(ids[:DUPLICATES], published, strict=False)
    )
    run.console.print(
        f"{len(ids):,} rewards published on {run.state.namespace}.ingest.outcomes, "
        f"{len(joined):,} joined (ListDecisions); {DUPLICATES} published again with other "
        f"values: {refused} refused as duplicate (lathe.inference.reward.refused), the first "
        + ("stands" if first_stands else "[red]was replaced[/red]")
    )

    clock.lap("rewards")
    # 4. Learn from the logs: the better policy and a worse one, each evaluated and registered.
    # Every reward is in: an explicit end reads them now (left open, the window would end
    # a censoring window before now, where every reward has settled).
    window = LogWindow(started, datetime.now(UTC), DEFINITION, 1)
    policies = PolicyClient(run.c.trainer.stub, actor=ACTOR)
    learned_runs = []
    with run.progress("the trainer learns two policies from the logs (LearnPolicy)", 2) as bar:
        for epsilon, version in ((LEARNED_EPSILON, 2), (1.0, 3)):
            policy_json = _spec(name, epsilon, version).to_json().decode()
            learned_runs.append(
                await policies.learn(name, window, policy_json=policy_json, holdout=HOLDOUT, seed=1)
            )
            bar.advance()
    (learned, evaluation), (worse, worse_evaluation) = learned_runs
    run.console.print(
        f"LearnPolicy -> v{learned} (a reward network acting ε-greedily, ε {LEARNED_EPSILON}) "
        f"and v{worse} (the same network acting uniformly at random, ε 1), each learned on "
        f"the older {1 - HOLDOUT:.0%} of v{v1}'s decisions and evaluated on the newest "
        f"{HOLDOUT:.0%}; v{learned} on "
        f"{evaluation.rows:,} held-out decisions:"
    )
    run.console.print(evaluation_table(evaluation))
    version = (
        await run.c.registry.GetModelVersion(
            reg_rr.GetModelVersionRequest(model_name=name, version=learned)
        )
    ).model_version
    ope = {k: v for k, v in version.metrics.items() if k.startswith("ope.")}
    run.console.print(
        f"registry: v{learned} records {len(ope)} ope.* metrics (ope.dr.value "
        f"{version.metrics['ope.dr.value']:+.4f}, ope.dr_gain.lower "
        f"{version.metrics['ope.dr_gain.lower']:+.4f}) and opl.logging_version "
        f"{version.metrics['opl.logging_version']:.0f}"
    )

    clock.lap("learn")
    # 5. The gate: the worse one refused, the learned one accepted; inference serves it.
    gain = {e.estimator: e for e in worse_evaluation.estimates}["dr_gain"]
    run.console.print(
        f"gate: DR gain over production >= {GATE_MARGIN} with its lower bound above 0 "
        f"(v{worse}: {gain.value:+.4f} [{gain.lower:+.4f}, {gain.upper:+.4f}])"
    )
    alice = [("lathe-actor", ACTOR)]
    worse_verdict = await attempt(
        run,
        f"{ACTOR}: production -> v{worse}",
        run.c.registry.SetAlias(
            reg_rr.SetAliasRequest(
                model_name=name, alias="production", version=worse, expected_version=v1
            ),
            metadata=alice,
        ),
    )
    learned_verdict = await attempt(
        run,
        f"{ACTOR}: production -> v{learned}",
        run.c.registry.SetAlias(
            reg_rr.SetAliasRequest(
                model_name=name, alias="production", version=learned, expected_version=v1
            ),
            metadata=alice,
        ),
        required=True,
    )
    with run.progress("inference follows the alias event", None) as bar:
        await wait_for_deployment(run, "production", learned, bar, model_name=name)
    served = await _decide(
        run, name, world, len(loans), f"probe-{run.run_id}", "Decide again: each loan of the slice"
    )
    versions = sorted({d.model_version for d in served})
    learned_probabilities = np.array([[d.probabilities[a] for a in ACTION_NAMES] for d in served])

    clock.lap("gate_and_serve")
    # 6. What only a simulator can say: the true values.
    truth = {
        "logging": _true_value(world, rows, logging_probabilities),
        "learned": _true_value(world, np.arange(len(loans)), learned_probabilities),
        "best": best_value(world),
    }
    estimates = {e.estimator: e for e in evaluation.estimates}
    table = Table("policy", "version", "estimated (DR, held out)", "true value ($1,000s)")
    table.add_row(
        f"logging: legacy scorecard, ε {LOGGING_EPSILON}",
        f"v{v1}",
        f"{estimates['logging'].value:+.4f} (realised)",
        f"{truth['logging']:+.4f}",
    )
    table.add_row(
        f"learned, ε {LEARNED_EPSILON}",
        f"v{learned} (serving: {', '.join(f'v{v}' for v in versions)})",
        f"{estimates['dr'].value:+.4f} [{estimates['dr'].lower:+.4f}, "
        f"{estimates['dr'].upper:+.4f}]",
        f"{truth['learned']:+.4f}",
    )
    table.add_row("best tier for every loan", "-", "-", f"{truth['best']:+.4f}")
    run.console.print(table)
    verdict = "beats" if truth["learned"] > truth["logging"] else "[red]does not beat[/red]"
    run.console.print(
        f"the learned policy's true value {verdict} the logging policy's: "
        f"{_dollars(truth['learned'])} vs {_dollars(truth['logging'])} per decision "
        f"(best possible {_dollars(truth['best'])})"
    )
    clock.lap("true_values")
    run.report["decisioning"] = {
        "model": name,
        "loans": len(loans),
        "decisions": len(decided),
        "decisions_by_action": dict(counts),
        "logged": len(logged),
        "logged_with_propensity": with_propensity,
        "rewards_published": len(ids),
        "rewards_joined": len(joined),
        "duplicates_published": DUPLICATES,
        "duplicates_refused": refused,
        "first_reward_stands": first_stands,
        "logging_version": v1,
        "learned_version": learned,
        "worse_version": worse,
        "holdout_rows": evaluation.rows,
        "estimates": {
            e.estimator: {"value": e.value, "lower": e.lower, "upper": e.upper}
            for e in evaluation.estimates
        },
        "gate": {"worse": worse_verdict, "learned": learned_verdict, "margin": GATE_MARGIN},
        "serving_versions": versions,
        "true_value": truth,
        "seconds": clock.laps,
    }


class _Clock:
    """Seconds per phase of the step, for the report."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self._last, 2)
        self._last = now


def _dollars(thousands: float) -> str:
    return f"{'-' if thousands < 0 else ''}${abs(thousands) * 1000:,.0f}"


def _spec(name: str, epsilon: float, version: int) -> PolicySpec:
    return PolicySpec(name, ACTIONS, EpsilonGreedy(epsilon), f"{name}-v{version}")


def _true_value(world: CreditWorld, rows: np.ndarray, probabilities: np.ndarray) -> float:
    return float((probabilities * world.expected_rewards[rows]).sum(axis=1).mean())


async def _register_logging_policy(
    run: DemoRun, name: str, world: CreditWorld, spec: PolicySpec
) -> int:
    champion = (
        await run.c.registry.GetModelVersion(
            reg_rr.GetModelVersionRequest(
                model_name=run.model_name, version=run.trained["champion"].version
            )
        )
    ).model_version
    features = world.preprocessing.feature_names
    registered = await RegistryClient(run.c.registry, actor=ACTOR).register_version(
        VersionSpec(
            model_name=name,
            signature=reg.Signature(
                inputs=[reg.TensorSpec(name=n, dtype=reg.DATA_TYPE_FLOAT64) for n in features],
                outputs=[
                    reg.TensorSpec(
                        name="scores", dtype=reg.DATA_TYPE_FLOAT32, shape=[-1, len(ACTION_NAMES)]
                    )
                ],
            ),
            description="legacy scorecard: expected reward per tier by grade, ε-greedy",
            lineage=reg.Lineage(
                feature_service=FEATURE_SERVICE,
                feature_service_version=champion.lineage.feature_service_version,
            ),
        ),
        {
            "model.onnx": ArtifactUpload(reg.ARTIFACT_FORMAT_ONNX, content=legacy_onnx(world)),
            "preprocessing.json": ArtifactUpload(
                reg.ARTIFACT_FORMAT_JSON, content=world.preprocessing.to_json()
            ),
            "policy.json": ArtifactUpload(reg.ARTIFACT_FORMAT_JSON, content=spec.to_json()),
        },
    )
    return int(registered.version)


async def _decide(
    run: DemoRun, name: str, world: CreditWorld, count: int, prefix: str, description: str
) -> list[RowDecision]:
    """``count`` decisions (decision ``i`` for loan ``i % len(slice)``), DECIDE_ROWS per
    Decide call."""
    loans = run.loans[: run.options.decisions]
    out: list[RowDecision] = []
    with run.progress(description, count) as bar:
        for start in range(0, count, DECIDE_ROWS):
            rows = [
                PredictRow(
                    {"loan_id": loans[i % len(loans)]},
                    decision_id=f"{prefix}-{i:05d}",
                    eligible_actions=eligible_actions(world, i % len(loans)),
                )
                for i in range(start, min(start + DECIDE_ROWS, count))
            ]
            answer = await run.c.inference.decide(name, rows, timeout_s=30)
            out.extend(answer.rows)
            bar.advance(len(rows))
    return out


async def _wait_until(
    run: DemoRun, description: str, expected: int, count: Callable[[], int]
) -> None:
    """Until ``count()`` reaches ``expected`` (a live bar), or fail after _PATIENCE_S."""
    deadline = time.monotonic() + _PATIENCE_S
    with run.progress(description, expected) as bar:
        while (done := count()) < expected:
            bar.update(done)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{description}: {done:,} of {expected:,} after {_PATIENCE_S:.0f}s; "
                    "see `lathe logs inference`"
                )
            await asyncio.sleep(0.1)
        bar.update(done)


async def _list_decisions(
    run: DemoRun, name: str, wanted: set[str]
) -> dict[str, irr.LoggedDecision]:
    """The ``wanted`` decisions as ListDecisions gives them, listed again until all are
    there: a listing ends a moment before now (decisions still being written are not
    passed), and these were just made."""
    deadline = time.monotonic() + _PATIENCE_S
    while True:
        listed = await _list_all_decisions(run, name)
        found = {k: d for k, d in listed.items() if k in wanted}
        if len(found) == len(wanted):
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"ListDecisions lists {len(found):,} of the {len(wanted):,} decisions made "
                f"after {_PATIENCE_S:.0f}s; see `lathe logs inference`"
            )
        await asyncio.sleep(0.5)


async def _list_all_decisions(run: DemoRun, name: str) -> dict[str, irr.LoggedDecision]:
    out: dict[str, irr.LoggedDecision] = {}
    request = irr.ListDecisionsRequest(
        model_name=name,
        reward_definition=DEFINITION,
        reward_definition_version=1,
        page_size=10_000,
    )
    while True:
        page = await run.c.inference.stub.ListDecisions(request, timeout=30)
        out.update({d.decision.decision_id: d for d in page.decisions})
        if not page.next_page_token:
            return out
        request.page_token = page.next_page_token


async def _publish_rewards(run: DemoRun, ids: list[str], values: np.ndarray) -> None:
    """Each decision's reward as a product system publishes it; then the first
    ``DUPLICATES`` again with other values (refused: the first reward stands)."""
    assert run.state is not None
    subject = f"{run.state.namespace}.ingest.outcomes"
    nats_client = await connect_nats(run.state.nats_url, name="lathe-demo-outcomes")
    try:
        js = nats_client.jetstream()
        now = datetime.now(UTC).isoformat()
        outcomes = [(i, float(v), f"{i}/{DEFINITION}@1") for i, v in zip(ids, values, strict=True)]
        outcomes += [(i, v + 1.0, f"{key}/again") for i, v, key in outcomes[:DUPLICATES]]
        with run.progress(f"publish the rewards on {subject}", len(outcomes)) as bar:
            for start in range(0, len(outcomes), 500):
                chunk = outcomes[start : start + 500]
                await asyncio.gather(
                    *(
                        js.publish(
                            subject,
                            json.dumps(
                                {
                                    "decision_id": decision_id,
                                    "reward": reward,
                                    "reward_time": now,
                                    "reward_definition": DEFINITION,
                                    "reward_definition_version": 1,
                                }
                            ).encode(),
                            headers={"Nats-Msg-Id": key},
                        )
                        for decision_id, reward, key in chunk
                    )
                )
                bar.advance(len(chunk))
    finally:
        await nats_client.close()


STEP = Step("Decisioning: a credit-line policy learned from its own logs", decisioning)
