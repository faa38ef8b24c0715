"""Validation metrics of a binary classifier: AUC, log loss, KS, expected calibration error."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

ECE_BINS = 10


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) formula; ties count one half."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, scores: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(scores.astype(np.float64), eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def ks(labels: np.ndarray, scores: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score CDFs of the two classes."""
    positives, negatives = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    thresholds = np.unique(scores)
    cdf_pos = np.searchsorted(positives, thresholds, side="right") / len(positives)
    cdf_neg = np.searchsorted(negatives, thresholds, side="right") / len(negatives)
    return float(np.max(np.abs(cdf_pos - cdf_neg)))


def ece(labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width probability bins, weighted by rows."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1], right=False), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.mean() * abs(scores[members].mean() - labels[members].mean())
    return float(total)


def all_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    labels = labels.astype(np.float64)
    scores = scores.astype(np.float64)
    return {
        "auc": auc(labels, scores),
        "log_loss": log_loss(labels, scores),
        "ks": ks(labels, scores),
        "ece": ece(labels, scores),
    }
