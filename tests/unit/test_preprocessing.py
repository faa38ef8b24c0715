"""libs/preprocessing: fitted on the training rows only, applied identically everywhere."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import norm

from libs.preprocessing import PreprocessingSpec, Preprocessor, fit, transform


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


def _reference_transform(spec: PreprocessingSpec, columns: dict[str, list[object]]) -> np.ndarray:
    """The transform as first written (one feature at a time, knots derived per call):
    the compiled ``Preprocessor`` must give exactly these bits."""
    from scipy.special import ndtri

    rows = len(next(iter(columns.values())))
    out = np.empty((rows, len(spec.numeric)), dtype=np.float32)
    for j, f in enumerate(spec.numeric):
        values = np.array([np.nan if v is None else float(v) for v in columns[f.name]])  # type: ignore[arg-type]
        filled = np.where(np.isnan(values), f.fill, values)
        if f.normalization == "standard":
            out[:, j] = (filled - f.mean) / f.std
            continue
        knots = np.asarray(f.quantiles, dtype=np.float64)
        if len(knots) < 2 or knots[0] == knots[-1]:
            out[:, j] = 0.0
            continue
        levels = np.linspace(0.0, 1.0, len(knots))
        unique, first = np.unique(knots, return_index=True)
        last = len(knots) - 1 - np.unique(knots[::-1], return_index=True)[1]
        u = np.interp(filled, unique, (levels[first] + levels[last]) / 2)
        out[:, j] = ndtri(np.clip(u, 1e-4, 1 - 1e-4))
    return out


@pytest.mark.parametrize("normalization", ["quantile", "standard"])
def test_the_compiled_preprocessor_gives_the_reference_bits(normalization: str) -> None:
    rng = np.random.default_rng(7)
    n = 2000
    train: dict[str, list[object]] = {
        "v:skewed": rng.lognormal(size=n).tolist(),
        "v:few": rng.integers(0, 3, n).astype(float).tolist(),  # repeated knots
        "v:holes": [None if i % 5 == 0 else float(x) for i, x in enumerate(rng.normal(size=n))],
        "v:constant": [4.0] * n,  # degenerate knots: always 0
        "v:grade": rng.choice(["A", "B", "C"], n).tolist(),
    }
    spec = fit(train, list(train), categorical=["v:grade"], normalization=normalization)
    rows: dict[str, list[object]] = {k: [*v[::-3], None, 1e12, -1e12] for k, v in train.items()}
    rows["v:grade"] = [*rows["v:grade"][:-3], None, "Z", "A"]
    compiled = Preprocessor(spec)
    encoded = compiled.apply(rows)
    expected = _reference_transform(spec, {k: v for k, v in rows.items() if k != "v:grade"})
    assert encoded.numeric.dtype == np.float32
    assert np.array_equal(encoded.numeric.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(transform(spec, rows).numeric.view(np.uint32), expected.view(np.uint32))
    vocabulary = {v: i + 1 for i, v in enumerate(spec.categorical[0].vocabulary)}
    codes = [vocabulary.get(v, 0) for v in rows["v:grade"]]  # type: ignore[call-overload]
    assert encoded.categorical[:, 0].tolist() == codes and codes[-3:-1] == [0, 0]


def test_encode_takes_arrays_and_leaves_them_alone() -> None:
    spec = fit({"a": [1.0, 2.0, 3.0, 10.0], "c": ["x", "y", "x", "x"]}, ["a", "c"])
    compiled = Preprocessor(spec)
    numeric = np.array([[2.5], [np.nan]])
    encoded = compiled.encode(numeric, [["y", None]])
    assert np.isnan(numeric[1, 0])  # the caller's array is not filled in place
    again = compiled.apply({"a": [2.5, None], "c": ["y", None]})
    np.testing.assert_array_equal(encoded.numeric, again.numeric)
    np.testing.assert_array_equal(encoded.categorical, again.categorical)
    assert encoded.categorical[:, 0].tolist() == [2, 0]
