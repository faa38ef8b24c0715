"""Fitting the preprocessing on the training split only (validation rows never leak in).

A sequence's fields are fitted over the events the model will see (each row's newest
``max_length``, through the same ``newest_events`` the encoder uses): a numeric field's
fill, normalisation and quantiles over those events' values, a categorical field's
vocabulary over their categories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from libs.preprocessing.apply import Column, as_float64, as_strings
from libs.preprocessing.sequences import epoch_seconds, event_ages, is_text_list, newest_events
from libs.preprocessing.spec import (
    NORMALIZATIONS,
    PADDINGS,
    CategoricalFeature,
    NumericFeature,
    PreprocessingSpec,
    SequenceFeature,
)

QUANTILE_KNOTS = 101
MAX_VOCABULARY = 1000


@dataclass(frozen=True)
class SequenceColumns:
    """Which list features form one sequence, as a job spec names them."""

    name: str
    """The sequence's name (its model inputs are ``<name>.values`` / ``.codes`` / ``.mask``)."""
    features: tuple[str, ...]
    """Its list features (one per event field), each a list per row, oldest event first."""
    max_length: int
    """N: how many of the newest events the model reads."""
    padding: str = "left"
    """``left`` (newest event in the last slot) or ``right``."""
    event_time: str = ""
    """The feature (one of ``features``) holding the events' times in epoch seconds (the
    feature store's ``<name>__event_time``); the model reads their ages. "" for none."""


def fit(
    columns: Mapping[str, Column],
    features: Sequence[str],
    *,
    categorical: Sequence[str] = (),
    normalization: str = "quantile",
    extra: Mapping[str, Any] | None = None,
    sequences: Sequence[SequenceColumns] = (),
    reference_times: Column | None = None,
) -> PreprocessingSpec:
    """Fit on ``columns`` (training rows only); ``categorical`` names the category features.

    Numeric features keep the order of ``features``, as do categorical ones. A string
    column is categorical whether or not it is named in ``categorical``. Features named
    by one of ``sequences`` are list columns fitted as that sequence's fields (also when
    ``features`` lists them), in the order the sequence names them. A sequence's
    ``event_time`` field is fitted on the events' ages at ``reference_times`` (each
    training row's label time: epoch seconds or timestamps).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    in_sequences = [f for s in sequences for f in s.features]
    if len(set(in_sequences)) != len(in_sequences):
        raise ValueError("a feature can belong to one sequence only")
    numeric_specs, categorical_specs = [], []
    rows = 0
    for name in (f for f in features if f not in in_sequences):
        values = columns[name]
        rows = len(values)
        if _is_list(values):
            raise ValueError(
                f"feature {name!r} holds a list per row; name it in a sequence (sequences=...)"
            )
        if name in categorical or _is_text(values):
            categorical_specs.append(_fit_categorical(name, as_strings(values)))
        else:
            numeric_specs.append(_fit_numeric(name, as_float64(values), normalization))
    references = None if reference_times is None else epoch_seconds(reference_times)
    fitted = tuple(
        _fit_sequence(s, columns, normalization, categorical, references) for s in sequences
    )
    if sequences and not numeric_specs and not categorical_specs:
        rows = len(columns[sequences[0].features[0]])
    return PreprocessingSpec(
        tuple(numeric_specs), tuple(categorical_specs), rows, dict(extra or {}), fitted
    )


def _fit_sequence(
    sequence: SequenceColumns,
    columns: Mapping[str, Column],
    normalization: str,
    categorical: Sequence[str],
    reference_times: np.ndarray | None,
) -> SequenceFeature:
    if not sequence.features:
        raise ValueError(f"sequence {sequence.name!r} names no features")
    if sequence.max_length < 1:
        raise ValueError(f"sequence {sequence.name!r}: max_length must be >= 1")
    if sequence.padding not in PADDINGS:
        raise ValueError(f"sequence {sequence.name!r}: padding must be one of {PADDINGS}")
    events = newest_events(
        columns,
        sequence.features,
        max_length=sequence.max_length,
        padding=sequence.padding,
        sequence=sequence.name,
    )
    if sequence.event_time and sequence.event_time not in sequence.features:
        raise ValueError(
            f"sequence {sequence.name!r}: event_time {sequence.event_time!r} is not one of its "
            "features"
        )
    numeric_specs, categorical_specs = [], []
    for name in sequence.features:
        values = events.fields[name]
        if name == sequence.event_time:
            if is_text_list(columns[name]):
                raise ValueError(f"sequence {sequence.name!r}: event times {name!r} are text")
            ages = event_ages(as_float64(values), events.row, reference_times)
            numeric_specs.append(_fit_numeric(name, ages, normalization))
        elif name in categorical or is_text_list(columns[name]):
            categorical_specs.append(_fit_categorical(name, as_strings(values)))
        else:
            numeric_specs.append(_fit_numeric(name, as_float64(values), normalization))
    return SequenceFeature(
        sequence.name,
        sequence.max_length,
        sequence.padding,
        tuple(numeric_specs),
        tuple(categorical_specs),
        sequence.event_time,
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


def _is_list(values: Column) -> bool:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        kind = values.type
        return pa.types.is_list(kind) or pa.types.is_large_list(kind)
    sample = values[:100] if isinstance(values, np.ndarray) else list(values)[:100]
    return any(isinstance(v, list | tuple | np.ndarray) for v in sample)


def _is_text(values: Column) -> bool:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "OUS" and any(isinstance(v, str) for v in values[:100])
    return any(isinstance(v, str) for v in list(values)[:100])
