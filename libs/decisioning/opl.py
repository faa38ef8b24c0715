"""Learn a policy from logs and evaluate it on logs it never saw: ready to register.

``learn_policy`` splits the logs (a held-out fraction drawn by a seeded permutation, or
the caller's mask — e.g. the most recent decisions), fits the reward network on the
training part only (``learning.py``), exports it (``export.py``), scores the held-out
contexts *with the exported ONNX file* (what inference will serve), turns the scores into
the spec's distribution, and evaluates that with ``evaluate`` on the held-out part. The
result carries ``model.onnx``, ``policy.json`` and flat metrics (``ope.dr.value``,
``ope.dr.lower``, ``ope.dr_gain.lower``, …) for the registry and its promotion gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from libs.decisioning.distribution import distribution
from libs.decisioning.evaluate import EvaluationConfig, Report, evaluate
from libs.decisioning.export import export_scorer, run_scorer
from libs.decisioning.learning import LearningConfig, fit_reward_network
from libs.decisioning.logs import LoggedDecisions
from libs.decisioning.spec import PolicySpec


@dataclass(frozen=True)
class LearnedPolicy:
    """A new policy version's artifacts and its held-out evaluation."""

    spec: PolicySpec
    """Becomes ``policy.json``."""
    onnx_bytes: bytes
    """Becomes ``model.onnx``: ``numeric``/``categorical`` in, ``spec.output`` out."""
    report: Report
    """OPE of the policy (with its exploration) on the held-out logs."""
    train_rows: int
    """Logged decisions it learned from."""
    holdout_rows: int
    """Logged decisions it was evaluated on (disjoint from the training ones)."""
    parity_max_abs_diff: float
    """Largest |ONNX Runtime - torch| score on the held-out rows."""
    metrics: dict[str, float] = field(default_factory=dict)
    """``report.metrics()`` plus ``opl.*``: what registration records."""


def learn_policy(
    logs: LoggedDecisions,
    spec: PolicySpec,
    cardinalities: Sequence[int],
    *,
    holdout: float | np.ndarray = 0.3,
    learning: LearningConfig | None = None,
    evaluation: EvaluationConfig | None = None,
) -> LearnedPolicy:
    """Learn ``spec``'s scorer from ``logs`` and evaluate it on the held-out part.

    ``cardinalities``: per categorical input, the embedding rows the model needs
    (``CategoricalFeature.cardinality`` of the preprocessing that encoded the logs), so
    every index inference can send has a row. ``holdout``: a fraction, or a boolean mask
    over the rows (True: held out).
    """
    learning = learning or LearningConfig()
    mask = _holdout_mask(logs.rows, holdout, learning.seed)
    train, held = logs.take(~mask), logs.take(mask)
    if len(cardinalities) != logs.categorical.shape[1]:
        raise ValueError(
            f"{len(cardinalities)} cardinalities for {logs.categorical.shape[1]} categorical "
            f"inputs; give one per column (vocabulary size + 1)"
        )
    model = fit_reward_network(train, spec, cardinalities, learning)
    exported = export_scorer(model, held.numeric, held.categorical, output=spec.output)
    scores = run_scorer(exported.onnx_bytes, held.numeric, held.categorical, output=spec.output)
    report = evaluate(held, distribution(spec, scores, held.eligible), evaluation)
    metrics = {
        **report.metrics(),
        "opl.train_rows": float(train.rows),
        "opl.holdout_rows": float(held.rows),
        "opl.parity_max_abs_diff": exported.parity_max_abs_diff,
    }
    return LearnedPolicy(
        spec, exported.onnx_bytes, report, train.rows, held.rows,
        exported.parity_max_abs_diff, metrics,
    )  # fmt: skip


def _holdout_mask(rows: int, holdout: float | np.ndarray, seed: int) -> np.ndarray:
    if isinstance(holdout, np.ndarray):
        mask = np.asarray(holdout, dtype=bool)
        if mask.shape != (rows,):
            raise ValueError(f"holdout mask is {mask.shape}, expected ({rows},)")
    else:
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
        count = round(rows * holdout)
        mask = np.zeros(rows, dtype=bool)
        mask[np.random.default_rng(seed).permutation(rows)[:count]] = True
    if mask.all() or not mask.any():
        raise ValueError("the holdout must leave rows both to learn from and to evaluate on")
    return mask
