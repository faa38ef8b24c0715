"""Applying a fitted ``PreprocessingSpec``: feature values in, the model's input arrays out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy.special import ndtri

from libs.preprocessing.spec import NumericFeature, PreprocessingSpec

_EDGE = 1e-4
"""Quantile levels are clipped to [_EDGE, 1 - _EDGE] before the inverse normal CDF (±3.7)."""

Column = Sequence[object] | np.ndarray | pa.Array | pa.ChunkedArray


@dataclass(frozen=True)
class EncodedBatch:
    """The model's inputs for a batch of rows."""

    numeric: np.ndarray
    """float32 [rows, numeric features], every value finite."""
    categorical: np.ndarray
    """int64 [rows, categorical features]; 0 is missing or unseen."""

    @property
    def rows(self) -> int:
        return int(self.numeric.shape[0])


def transform(spec: PreprocessingSpec, columns: Mapping[str, Column]) -> EncodedBatch:
    """Encode ``columns`` (feature name -> values, None for missing) as ``spec`` says."""
    missing = [name for name in spec.feature_names if name not in columns]
    if missing:
        raise KeyError(f"no values for features {missing}; the model needs {spec.feature_names}")
    rows = _rows(columns, spec)
    numeric = np.empty((rows, len(spec.numeric)), dtype=np.float32)
    for j, feature in enumerate(spec.numeric):
        numeric[:, j] = normalize(feature, as_float64(columns[feature.name]))
    categorical = np.empty((rows, len(spec.categorical)), dtype=np.int64)
    for j, cat in enumerate(spec.categorical):
        index = {value: i + 1 for i, value in enumerate(cat.vocabulary)}
        values = as_strings(columns[cat.name])
        categorical[:, j] = [index.get(v, 0) if v is not None else 0 for v in values]
    return EncodedBatch(numeric, categorical)


def normalize(feature: NumericFeature, values: np.ndarray) -> np.ndarray:
    """Fill missing values, then normalise; float64 in, float64 out."""
    filled = np.where(np.isnan(values), feature.fill, values)
    if feature.normalization == "standard":
        return (filled - feature.mean) / feature.std
    knots = np.asarray(feature.quantiles, dtype=np.float64)
    if len(knots) < 2 or knots[0] == knots[-1]:
        return np.zeros_like(filled)
    levels = np.linspace(0.0, 1.0, len(knots))
    # Repeated knots (a value that fills many quantiles) map to their mid level, so the
    # transform stays a function of the value alone.
    unique, first = np.unique(knots, return_index=True)
    last = len(knots) - 1 - np.unique(knots[::-1], return_index=True)[1]
    mid = (levels[first] + levels[last]) / 2
    u = np.interp(filled, unique, mid)
    return ndtri(np.clip(u, _EDGE, 1 - _EDGE))


def as_float64(values: Column) -> np.ndarray:
    """Numbers (and booleans) as float64, missing as NaN."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values.astype(np.float64, copy=False)
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values)
    if pa.types.is_boolean(array.type) or pa.types.is_null(array.type):
        array = array.cast(pa.int8())
    return np.asarray(array.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def as_strings(values: Column) -> list[str | None]:
    """Category values as strings, missing as None."""
    items = values.to_pylist() if isinstance(values, pa.Array | pa.ChunkedArray) else values
    return [None if v is None else str(v) for v in items]


def _rows(columns: Mapping[str, Column], spec: PreprocessingSpec) -> int:
    lengths = {len(columns[name]) for name in spec.feature_names}
    if len(lengths) > 1:
        raise ValueError(f"feature columns differ in length: {sorted(lengths)}")
    return lengths.pop() if lengths else 0
