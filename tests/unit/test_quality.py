"""Histograms and PSI (pure logic)."""

from __future__ import annotations

import math

import numpy as np

from services.feature_store.domain.quality import (
    histogram,
    profile,
    profile_of_array,
    psi,
    summarize,
)


def test_profile_has_equal_population_bins_and_counts_nulls() -> None:
    values = [float(v) for v in range(1000)] + [None, None]
    built = profile("f", values, bins=10)
    assert (built.count, built.nulls) == (1000, 2)
    assert len(built.counts) == len(built.edges) + 1 == 10
    assert all(95 <= c <= 105 for c in built.counts)


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(1)
    reference = profile("f", rng.normal(0, 1, 5000).tolist())
    same = histogram(rng.normal(0, 1, 5000), list(reference.edges))
    moved = histogram(rng.normal(1.5, 1, 5000), list(reference.edges))
    assert psi(list(reference.counts), same) < 0.02
    assert psi(list(reference.counts), moved) > 0.25
    assert math.isnan(psi([0, 0], [1, 2]))


def test_summary_of_no_values() -> None:
    summary = summarize([None])
    assert summary.count == 0 and summary.nulls == 1 and math.isnan(summary.mean)


def test_profile_of_an_array_equals_the_profile_of_its_values() -> None:
    rng = np.random.default_rng(2)
    values = [None if i % 7 == 0 else float(v) for i, v in enumerate(rng.gamma(2, 3, 3000))]
    present = np.array([v for v in values if v is not None])
    assert profile_of_array("f", present, values.count(None)) == profile("f", values)


def test_histogram_bins_match_searchsorted_including_ties_and_nan() -> None:
    rng = np.random.default_rng(4)
    edges = [-1.0, 0.0, 0.5, 2.0]
    values = np.concatenate([rng.normal(0, 1, 10_000), edges, [np.nan, np.inf, -np.inf]])
    expected = np.bincount(np.searchsorted(edges, values, side="right"), minlength=5)
    assert histogram(values, edges) == expected.tolist()
