"""Validation metrics against brute-force reference implementations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.trainer.training.metrics import auc, ece, ks, log_loss


def reference_auc(y: np.ndarray, p: np.ndarray) -> float:
    pairs = [(a, b) for a, b in itertools.product(p[y == 1], p[y == 0])]
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def reference_ks(y: np.ndarray, p: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(p):
        best = max(best, abs((p[y == 1] <= t).mean() - (p[y == 0] <= t).mean()))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(200) < 0.3).astype(float)
    p = np.round(np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1), 2)  # ties on purpose
    assert auc(y, p) == pytest.approx(reference_auc(y, p))
    assert ks(y, p) == pytest.approx(reference_ks(y, p))
    expected_ll = -np.mean(
        [np.log(q if t else 1 - q) for t, q in zip(y, np.clip(p, 1e-7, 1 - 1e-7), strict=True)]
    )
    assert log_loss(y, p) == pytest.approx(expected_ll)


def test_ece_of_perfect_and_of_overconfident_scores() -> None:
    y = np.array([0, 1] * 50, dtype=float)
    assert ece(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert ece(y, np.full(100, 0.95)) == pytest.approx(0.45)


def test_one_class_has_no_auc() -> None:
    assert np.isnan(auc(np.ones(5), np.linspace(0, 1, 5)))
