"""libs/preprocessing: fitted on the training rows only, applied identically everywhere."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import norm

from libs.preprocessing import PreprocessingSpec, fit, transform


def test_fit_learns_fills_normalisation_and_vocabularies_from_the_given_rows() -> None:
    columns = {
        "v:amount": pa.array([1.0, 2.0, None, 4.0, 100.0]),
        "v:term": [36, 60, 36, None, 36],
        "v:grade": pa.array(["A", "B", "A", None, "A"]),
        "v:flag": [True, False, True, True, None],
    }
    spec = fit(columns, ["v:amount", "v:term", "v:grade", "v:flag"], normalization="standard")
    assert [f.name for f in spec.numeric] == ["v:amount", "v:term", "v:flag"]
    assert spec.numeric[0].fill == 3.0  # median of the present values
    assert spec.categorical[0].vocabulary == ("A", "B")  # most frequent first
    encoded = transform(spec, {**columns, "v:grade": ["B", "Z", None, "A", "A"]})
    assert encoded.categorical[:, 0].tolist() == [2, 0, 0, 1, 1]  # unseen and missing: 0
    amount = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    expected = (amount - amount.mean()) / amount.std()
    np.testing.assert_allclose(encoded.numeric[:, 0], expected, rtol=1e-6)
    assert encoded.numeric.dtype == np.float32 and np.isfinite(encoded.numeric).all()


def test_quantile_normalisation_maps_training_ranks_to_a_standard_normal() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(size=5000)
    spec = fit({"x": values}, ["x"], normalization="quantile")
    out = transform(spec, {"x": values}).numeric[:, 0]
    assert abs(out.mean()) < 0.05 and abs(out.std() - 1) < 0.05
    median = transform(spec, {"x": [float(np.median(values))]}).numeric[0, 0]
    assert abs(median) < 0.05
    assert transform(spec, {"x": [values.max() * 10]}).numeric[0, 0] == pytest.approx(
        norm.ppf(1 - 1e-4), rel=1e-5
    )


def test_the_json_round_trips_and_refuses_unknown_versions() -> None:
    spec = fit({"a": [1.0, 2.0, 3.0], "c": ["x", "y", "x"]}, ["a", "c"], extra={"snapshot": "s"})
    again = PreprocessingSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    rows = {"a": [2.5, None], "c": ["y", "q"]}
    np.testing.assert_array_equal(transform(again, rows).numeric, transform(spec, rows).numeric)
    with pytest.raises(ValueError, match="version 99"):
        PreprocessingSpec.from_json(spec.to_json().replace(b'"version": 1', b'"version": 99'))


def test_missing_features_are_an_error_that_names_them() -> None:
    spec = fit({"a": [1.0, 2.0]}, ["a"])
    with pytest.raises(KeyError, match="'a'"):
        transform(spec, {"b": [1.0]})
