"""The demo's credit-line world: its default rate is the one asked for, and the legacy
scorecard served as ONNX makes exactly the world's legacy choices."""

from __future__ import annotations

import numpy as np
import pytest

from libs.cli.demo import credit_lines as cl
from libs.decisioning.distribution import distribution
from libs.decisioning.export import run_scorer
from libs.decisioning.simulator import ACTIONS, build_world
from libs.decisioning.spec import EpsilonGreedy, PolicySpec


def _world(rows: int = 800, seed: int = 3):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    grade = rng.choice(list("ABCDEFG"), rows, p=[0.2, 0.25, 0.25, 0.15, 0.1, 0.03, 0.02])
    rate = 6 + 3 * np.array(["ABCDEFG".index(g) for g in grade]) + rng.normal(0, 1, rows)
    columns: dict[str, list[object]] = {
        cl.feature(c): rng.lognormal(2, 0.5, rows).tolist() for c in cl.NUMERIC
    }
    columns[cl.feature("interest_rate")] = rate.tolist()
    columns[cl.feature("debt_to_income")] = [None, *rng.uniform(0, 45, rows - 1).tolist()]
    columns[cl.feature("grade")] = grade.tolist()
    columns[cl.feature("homeownership")] = rng.choice(["RENT", "OWN"], rows).tolist()
    bad = rng.random(rows) < 1 / (1 + np.exp(-(rate - 20) / 3))
    amount = rng.uniform(1, 40, rows)
    eligible = np.ones((rows, len(ACTIONS)), dtype=bool)
    eligible[rng.random(rows) < 0.3, 3] = False
    return build_world(
        columns,
        [cl.feature(c) for c in cl.NUMERIC],
        [cl.feature(c) for c in cl.CATEGORICAL],
        bad,
        amount,
        eligible,
        [cl.feature(c) for c in cl.LEGACY],
        default_rate=cl.DEFAULT_RATE,
    )


def test_the_default_rate_of_the_1x_line_is_the_one_asked_for() -> None:
    world = _world()
    line_100 = cl.ACTION_NAMES.index("line_100")
    assert world.default_probability[:, line_100].mean() == pytest.approx(cl.DEFAULT_RATE)
    assert (world.default_probability[:, 0] == 0).all()
    # A bigger line defaults more often; the best policy is worth at least any other.
    assert (np.diff(world.default_probability[:, 1:], axis=1) > 0).all()
    uniform = np.where(world.eligible, 1.0, 0.0)
    uniform /= uniform.sum(axis=1, keepdims=True)
    assert cl.best_value(world) > world.true_value(uniform)


def test_the_served_scorecard_chooses_as_the_worlds_legacy_scores_do() -> None:
    world = _world()
    scores = run_scorer(cl.legacy_onnx(world), world.numeric, world.categorical, output="scores")
    for epsilon in (0.0, 0.4):
        spec = PolicySpec("line", ACTIONS, EpsilonGreedy(epsilon), "s")
        served = distribution(spec, scores, world.eligible)
        expected = distribution(spec, world.legacy_scores, world.eligible)
        np.testing.assert_allclose(served, expected, atol=1e-12)


def test_rewards_are_the_expected_margin_plus_noise() -> None:
    world = _world()
    rows = np.arange(4000) % len(world.numeric)
    actions = np.arange(4000) % len(ACTIONS)
    published = cl.rewards(world, rows, actions, seed=1)
    noise = published - world.expected_rewards[rows, actions]
    assert abs(noise.mean()) < 0.02 and noise.std() == pytest.approx(cl.REWARD_NOISE, rel=0.1)
    assert cl.eligible_actions(world, 0) in ([], ["decline", "line_50", "line_100"])
