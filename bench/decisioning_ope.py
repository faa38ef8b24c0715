"""Decisioning: off-policy evaluation over a million logged decisions, next to a numpy one-liner.

The logs come from the credit simulator (``libs/decisioning/simulator.py``: real
``credit_data`` applicants, four credit-line tiers, an epsilon-greedy logging policy over
a legacy scorecard, rewards drawn from a known default model), generated before the
clock starts. The target is the true-reward greedy policy with 5% exploration.

1. Time: ``evaluate`` (IPS, SNIPS, DR with a 5-fold cross-fitted ridge reward model, every
   interval, ESS and diagnostics) against the plain numpy IPS point estimate over the same
   arrays (``mean(π[a]/p · r)``: the least any OPE can do); diagnostics split Lathe's time
   into the reward model's cross-fitting and the estimators with their intervals.
2. Accuracy: each estimate's error against the simulator's exact true value, and its 95%
   interval's half-width.

In process: no Postgres or NATS. Goal (issue 14): OPE over 1M logged decisions <= 10 s.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bench.families import Family
from bench.goals import Compare, GoalSpec
from bench.harness import BenchContext
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role, Value


@dataclass(frozen=True)
class DecisioningOpeParams:
    decisions: int = 1_000_000
    rounds: int = 3
    folds: int = 5
    seed: int = 7


QUICK = {"decisions": 100_000, "rounds": 1}


def _timed(work: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """Median wall seconds over ``rounds`` runs, and the last result."""
    seconds, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = work()
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds)), result


def _measure(params: DecisioningOpeParams) -> dict[str, Any]:
    from libs.decisioning.distribution import distribution
    from libs.decisioning.evaluate import EvaluationConfig, evaluate
    from libs.decisioning.reward_model import RewardModelConfig, cross_fit
    from libs.decisioning.simulator import credit_world
    from libs.decisioning.spec import EpsilonGreedy

    world = credit_world()
    logging = world.policy("logging", EpsilonGreedy(0.2))
    started = time.perf_counter()
    simulation = world.simulate(logging, world.legacy_scores, params.decisions, params.seed)
    simulate_s = time.perf_counter() - started
    policy = world.policy("target", EpsilonGreedy(0.05))
    full = distribution(policy, world.expected_rewards, world.eligible)
    logs, target = simulation.logs, full[simulation.rows]
    config = EvaluationConfig(reward_model=RewardModelConfig(folds=params.folds))
    rows = np.arange(logs.rows)

    def one_liner() -> float:
        return float(np.mean(target[rows, logs.actions] / logs.propensities * logs.rewards))

    baseline_s, baseline_value = _timed(one_liner, params.rounds)
    evaluate_s, report = _timed(lambda: evaluate(logs, target, config), params.rounds)
    fit_s, q = _timed(lambda: cross_fit(logs, config.reward_model), params.rounds)
    estimators_s, _ = _timed(
        lambda: evaluate(logs, target, config, reward_predictions=q), params.rounds
    )
    return {
        "simulate_s": simulate_s, "baseline_s": baseline_s, "baseline_value": baseline_value,
        "evaluate_s": evaluate_s, "fit_s": fit_s, "estimators_s": estimators_s,
        "report": report, "truth": world.true_value(full),
        "logging_truth": world.true_value(
            distribution(logging, world.legacy_scores, world.eligible)
        ),
    }  # fmt: skip


async def run(context: BenchContext, params: DecisioningOpeParams) -> FamilyResult:
    measured = await asyncio.to_thread(_measure, params)
    report, truth = measured["report"], measured["truth"]
    n = f"{params.decisions:,}"
    timing = Comparison(
        key="ope_time",
        title=f"OPE over {n} logged decisions, median of {params.rounds} (s)",
        headline="seconds",
        higher_is_better=False,
        columns=["seconds"],
        variants=[
            Measurement("numpy_ips", "numpy IPS one-liner (point estimate only)",
                        Role.BASELINE, {"seconds": Value(measured["baseline_s"], "s")}),
            Measurement("evaluate", "evaluate: IPS, SNIPS, DR (cross-fitted), intervals",
                        Role.LATHE, {"seconds": Value(measured["evaluate_s"], "s")}),
            Measurement("cross_fit", f"reward model alone ({params.folds}-fold ridge)",
                        Role.DIAGNOSTIC, {"seconds": Value(measured["fit_s"], "s")}),
            Measurement("estimators", "estimators + intervals, reward model given",
                        Role.DIAGNOSTIC, {"seconds": Value(measured["estimators_s"], "s")}),
        ],
        notes=[f"generating the logs (simulator, hash draws) took {measured['simulate_s']:.1f} s"],
    )  # fmt: skip
    accuracy = Comparison(
        key="ope_accuracy",
        title=f"Estimates vs the simulator's true value {truth:.5f} ({n} decisions)",
        headline="abs_error",
        higher_is_better=False,
        columns=["value", "abs_error", "ci95_half_width"],
        variants=[
            _estimate("numpy_ips", "numpy IPS one-liner", Role.BASELINE,
                      measured["baseline_value"], truth, None),
            *(_estimate(name, name.upper(), Role.LATHE, getattr(report, name).value, truth,
                        getattr(report, name)) for name in ("ips", "snips", "dr")),
            _estimate("dm", "DM (diagnostic: reward model alone)", Role.DIAGNOSTIC,
                      report.dm.value, truth, report.dm),
        ],
        notes=[
            f"logging policy: realised {report.logging.value:.5f}, true "
            f"{measured['logging_truth']:.5f}; ESS {report.effective_sample_size:,.0f} of "
            f"{report.rows:,}; mean importance weight {report.mean_weight.value:.4f}"
        ],
    )  # fmt: skip
    goals = [
        Goal(f"OPE over {n} logged decisions (evaluate)", measured["evaluate_s"], 10.0, "s", "<=")
    ]
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=[timing, accuracy],
        goals=goals,
        notes=[f"{os.cpu_count()} CPUs; numpy's BLAS threads as configured"],
    )


def _estimate(
    key: str, label: str, role: Role, value: float, truth: float, estimate: Any
) -> Measurement:
    half = (estimate.upper - estimate.lower) / 2 if estimate is not None else float("nan")
    return Measurement(
        key,
        label,
        role,
        {
            "value": Value(value, "reward"),
            "abs_error": Value(abs(value - truth), "reward"),
            "ci95_half_width": Value(half, "reward"),
        },
    )


GOALS = (
    GoalSpec(
        issue=14,
        description="OPE (IPS, SNIPS, cross-fitted DR, intervals) over 1M logged decisions, "
        "next to a numpy IPS one-liner",
        figure="ope_time/evaluate/seconds",
        baseline=("ope_time/numpy_ips/seconds",),
        compare=Compare.VALUE,
        comparator="<=",
        threshold=10.0,
        unit="s",
    ),
)

FAMILY = Family(
    name="decisioning.ope",
    summary="off-policy evaluation (IPS, SNIPS, cross-fitted DR, intervals) over 1M simulated "
    "logged decisions vs a numpy IPS one-liner; estimates vs the true value",
    params=DecisioningOpeParams,
    run=run,
    quick=QUICK,
    goals=GOALS,
)
