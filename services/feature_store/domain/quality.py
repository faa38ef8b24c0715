"""Feature statistics and drift (pure logic): summaries, histograms, PSI."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lathe.feature_store.v1 import events_pb2

PSI_FLOOR = 1e-4
"""Smallest bin share used in PSI, so an empty bin does not make it infinite."""


@dataclass(frozen=True)
class Summary:
    count: int
    nulls: int
    mean: float
    min: float
    max: float


def summarize(values: Sequence[float | None]) -> Summary:
    present = np.array([v for v in values if v is not None], dtype=float)
    nulls = len(values) - present.size
    if present.size == 0:
        return Summary(0, nulls, math.nan, math.nan, math.nan)
    return Summary(
        present.size, nulls, float(present.mean()), float(present.min()), float(present.max())
    )


def profile(
    feature: str, values: Sequence[float | None], bins: int = 10
) -> events_pb2.FeatureProfile:
    """A histogram with (up to) ``bins`` equal-population bins: the drift reference."""
    present = np.array([v for v in values if v is not None], dtype=float)
    return profile_of_array(feature, present, len(values) - present.size, bins)


def profile_of_array(
    feature: str, present: np.ndarray, nulls: int, bins: int = 10
) -> events_pb2.FeatureProfile:
    """``profile`` of the non-null values as an array (no Python object per value)."""
    result = events_pb2.FeatureProfile(feature=feature, count=present.size, nulls=nulls)
    if present.size == 0:
        return result
    edges = np.unique(np.quantile(_edge_sample(present), np.linspace(0, 1, bins + 1)[1:-1]))
    result.edges.extend(edges.tolist())
    result.counts.extend(histogram(present, edges))
    return result


_EDGE_SAMPLE = 100_000


def _edge_sample(present: np.ndarray) -> np.ndarray:
    """The values bin edges are placed on: all of them, or past ``_EDGE_SAMPLE`` a fixed
    random sample of that many (exact quantiles of 1M values cost ~30 ms a feature, a
    training set's profiles half a second; a sample's bins hold 10% +- 0.3% of the
    values, and the counts are still over every value)."""
    if present.size <= _EDGE_SAMPLE:
        return present
    picks = np.random.default_rng(0).integers(0, present.size, _EDGE_SAMPLE)
    return present[picks]


def histogram(values: np.ndarray, edges: Sequence[float]) -> list[int]:
    """Counts per bin of ``profile``'s layout (len(edges) + 1 bins; bin k holds
    edges[k-1] <= v < edges[k]; NaN falls in the last).

    One vectorized comparison per edge: 4x faster than ``searchsorted`` over unsorted
    values (20 ms per million here), with ~10 edges.
    """
    below = [int(np.count_nonzero(values < edge)) for edge in sorted(edges)]
    cumulative = [0, *below, int(values.size)]
    return [high - low for low, high in itertools.pairwise(cumulative)]


def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), on bin shares.

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
    """
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        return math.nan
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))
