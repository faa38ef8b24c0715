"""Numbers the demo prints: AUC and latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata


def auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney U) formula, ties counting one half (as the
    trainer computes it)."""
    positives = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 90, 95, 99)}
