"""Fitting the preprocessing on the training split only (validation rows never leak in)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from libs.preprocessing.apply import Column, as_float64, as_strings
from libs.preprocessing.spec import (
    NORMALIZATIONS,
    CategoricalFeature,
    NumericFeature,
    PreprocessingSpec,
)

QUANTILE_KNOTS = 101
MAX_VOCABULARY = 1000


def fit(
    columns: Mapping[str, Column],
    features: Sequence[str],
    *,
    categorical: Sequence[str] = (),
    normalization: str = "quantile",
    extra: Mapping[str, Any] | None = None,
) -> PreprocessingSpec:
    """Fit on ``columns`` (training rows only); ``categorical`` names the category features.

    Numeric features keep the order of ``features``, as do categorical ones. A string
    column is categorical whether or not it is named in ``categorical``.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    numeric_specs, categorical_specs = [], []
    rows = 0
    for name in features:
        values = columns[name]
        rows = len(values)
        if name in categorical or _is_text(values):
            categorical_specs.append(_fit_categorical(name, as_strings(values)))
        else:
            numeric_specs.append(_fit_numeric(name, as_float64(values), normalization))
    return PreprocessingSpec(
        tuple(numeric_specs), tuple(categorical_specs), rows, dict(extra or {})
    )


def _fit_numeric(name: str, values: np.ndarray, normalization: str) -> NumericFeature:
    present = values[~np.isnan(values)]
    if len(present) == 0:
        return NumericFeature(name, 0.0, normalization, quantiles=(0.0, 0.0))
    fill = float(np.median(present))
    filled = np.where(np.isnan(values), fill, values)
    std = float(filled.std())
    knots = np.quantile(filled, np.linspace(0.0, 1.0, QUANTILE_KNOTS))
    return NumericFeature(
        name,
        fill,
        normalization,
        mean=float(filled.mean()),
        std=std if std > 0 else 1.0,
        quantiles=tuple(float(k) for k in knots) if normalization == "quantile" else (),
    )


def _fit_categorical(name: str, values: list[str | None]) -> CategoricalFeature:
    counts = Counter(v for v in values if v is not None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_VOCABULARY]
    return CategoricalFeature(name, tuple(value for value, _ in ranked))


def _is_text(values: Column) -> bool:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "OUS" and any(isinstance(v, str) for v in values[:100])
    return any(isinstance(v, str) for v in list(values)[:100])
