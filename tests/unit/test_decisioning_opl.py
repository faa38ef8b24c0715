"""Off-policy learning on the credit simulator: the learned policy is truly better than the
logging one, ships as one ONNX file + policy.json, and is judged on logs it never saw."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from libs.decisioning.distribution import distribution
from libs.decisioning.export import run_scorer
from libs.decisioning.gate import promotion_gate
from libs.decisioning.learning import LearningConfig
from libs.decisioning.opl import learn_policy
from libs.decisioning.simulator import credit_world
from libs.decisioning.spec import EpsilonGreedy, PolicySpec

LOGGING = EpsilonGreedy(0.2)


def _cardinalities() -> list[int]:
    return [c.cardinality for c in credit_world().preprocessing.categorical]


def test_the_learned_policy_beats_the_logging_policy_in_truth_and_in_its_estimate() -> None:
    world = credit_world()
    logging = world.policy("logging", LOGGING)
    simulation = world.simulate(logging, world.legacy_scores, 20_000, seed=21)
    spec = world.policy("credit-line", EpsilonGreedy(0.05), salt="credit-line-v2")
    learned = learn_policy(simulation.logs, spec, _cardinalities(), holdout=0.3)

    scores = run_scorer(learned.onnx_bytes, world.numeric, world.categorical, output="scores")
    true_learned = world.true_value(distribution(spec, scores, world.eligible))
    true_logging = world.true_value(distribution(logging, world.legacy_scores, world.eligible))
    legacy_greedy = world.policy("legacy", EpsilonGreedy(0.0))
    true_legacy = world.true_value(distribution(legacy_greedy, world.legacy_scores, world.eligible))
    optimum = world.true_value(
        distribution(
            world.policy("optimal", EpsilonGreedy(0.0)), world.expected_rewards, world.eligible
        )
    )
    print(
        f"true values: learned {true_learned:.4f} (DR on held-out {learned.report.dr.value:.4f} "
        f"[{learned.report.dr.lower:.4f}, {learned.report.dr.upper:.4f}]), logging "
        f"{true_logging:.4f}, legacy greedy {true_legacy:.4f}, optimum {optimum:.4f}"
    )
    assert true_learned > true_logging + 0.01
    assert true_learned <= optimum
    report = learned.report
    assert abs(report.dr.value - true_learned) < 4 * report.dr.std_error
    assert promotion_gate(learned.metrics).passed, promotion_gate(learned.metrics).reason
    assert learned.train_rows == 14_000 and learned.holdout_rows == 6_000
    for name in ("ope.dr.value", "ope.dr.lower", "ope.dr.upper", "ope.snips.value",
                 "ope.ips.value", "ope.logging.value", "ope.dr_gain.lower", "ope.ess",
                 "opl.train_rows", "opl.holdout_rows", "opl.parity_max_abs_diff"):  # fmt: skip
        assert name in learned.metrics


def test_the_artifacts_are_one_onnx_file_with_a_dynamic_batch_and_a_policy_json() -> None:
    world = credit_world()
    simulation = world.simulate(world.policy("logging", LOGGING), world.legacy_scores, 3_000, 2)
    spec = world.policy("credit-line", EpsilonGreedy(0.05))
    learned = learn_policy(
        simulation.logs, spec, _cardinalities(), learning=LearningConfig(max_epochs=2)
    )
    model = onnx.load_from_string(learned.onnx_bytes)
    onnx.checker.check_model(model)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["numeric", "categorical"]
    assert [o.name for o in model.graph.output] == ["scores"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    one = run_scorer(learned.onnx_bytes, world.numeric[:1], world.categorical[:1], output="scores")
    many = run_scorer(learned.onnx_bytes, world.numeric[:7], world.categorical[:7], output="scores")
    assert one.shape == (1, 4) and many.shape == (7, 4)
    np.testing.assert_allclose(one[0], many[0], rtol=1e-5, atol=1e-6)
    assert learned.parity_max_abs_diff < 1e-4
    assert PolicySpec.from_json(learned.spec.to_json()) == spec


def test_the_held_out_logs_never_reach_the_learner() -> None:
    """Training is deterministic: changing only held-out rewards leaves the model identical."""
    world = credit_world()
    logs = world.simulate(world.policy("logging", LOGGING), world.legacy_scores, 3_000, 4).logs
    holdout = np.arange(logs.rows) % 4 == 0
    config = LearningConfig(max_epochs=2)
    spec = world.policy("credit-line", EpsilonGreedy(0.05))
    first = learn_policy(logs, spec, _cardinalities(), holdout=holdout, learning=config)
    shuffled = np.where(holdout, logs.rewards[::-1], logs.rewards)
    changed = dataclasses.replace(logs, rewards=shuffled)
    second = learn_policy(changed, spec, _cardinalities(), holdout=holdout, learning=config)
    assert first.onnx_bytes == second.onnx_bytes
    assert first.report.dr.value != second.report.dr.value  # evaluated on the changed rows
    assert first.holdout_rows == int(holdout.sum())


def test_learning_refuses_mismatched_inputs() -> None:
    world = credit_world()
    logs = world.simulate(world.policy("logging", LOGGING), world.legacy_scores, 500, 1).logs
    spec = world.policy("credit-line", EpsilonGreedy(0.05))
    with pytest.raises(ValueError, match="cardinalities for 4 categorical inputs"):
        learn_policy(logs, spec, [3])
    with pytest.raises(ValueError, match="holdout must be a fraction"):
        learn_policy(logs, spec, _cardinalities(), holdout=1.0)
    other = PolicySpec("other", spec.actions[:3], EpsilonGreedy(0.1), "s")
    with pytest.raises(ValueError, match="differ from the logs'"):
        learn_policy(logs, other, _cardinalities())
