"""Representative rows made from a model's own ``preprocessing.json``, for warm-up and parity.

Every version is checked on rows derived from what it was fitted on, so no extra artifact
is needed and the rows are the same wherever the version loads: each numeric feature
walks its training quantiles (or mean +- 3 standard deviations) with a missing value
every eighth row, and each categorical feature cycles through its vocabulary, a missing
value and one it never saw. Rows are deterministic; features are offset from one another
so rows are not all "low" or all "high" at once. Sequence features get histories of every
length from none (None, and []) to a few past N (so truncation is exercised), with their
fields' values walked the same way; a sequence's event times are the fixed reference time
(``REFERENCE_TIME``) minus ages walked through the fitted ages' quantiles.
"""

from __future__ import annotations

import numpy as np

from libs.preprocessing import PreprocessingSpec
from libs.preprocessing.spec import CategoricalFeature, NumericFeature

UNSEEN = "\x00lathe-unseen"
REFERENCE_TIME = 1_800_000_000.0
"""The rows' reference time (epoch seconds, 2027-01-15) when a model reads event ages."""


def reference_times(spec: PreprocessingSpec, rows: int = 64) -> np.ndarray | None:
    """Each representative row's reference time; None when the model reads no ages."""
    return np.full(rows, REFERENCE_TIME) if spec.reads_event_ages else None


def representative_columns(spec: PreprocessingSpec, rows: int = 64) -> dict[str, list[object]]:
    """Feature name -> ``rows`` raw values (None for missing), as the feature store gives them."""
    columns: dict[str, list[object]] = {}
    for j, feature in enumerate(spec.numeric):
        columns[feature.name] = [_number(feature, j, i) for i in range(rows)]
    for j, cat in enumerate(spec.categorical):
        columns[cat.name] = [_category(cat, j, i) for i in range(rows)]
    for k, sequence in enumerate(spec.sequences):
        lengths = [(i * 5 + k) % (sequence.max_length + 3) for i in range(rows)]
        for j, feature in enumerate(sequence.numeric):
            columns[feature.name] = [
                None if _no_list(i) else [_number(feature, j, i * 3 + e, 11) for e in range(n)]
                for i, n in enumerate(lengths)
            ]
            if feature.name == sequence.event_time:  # ages -> event times at the reference
                columns[feature.name] = [
                    None if v is None else [None if a is None else REFERENCE_TIME - a for a in v]
                    for v in columns[feature.name]
                ]
        for j, cat in enumerate(sequence.categorical):
            columns[cat.name] = [
                None if _no_list(i) else [_category(cat, j, i + e) for e in range(n)]
                for i, n in enumerate(lengths)
            ]
    return columns


def _number(feature: NumericFeature, j: int, i: int, every: int = 8) -> float | None:
    if (i + j) % every == every - 1:
        return None
    if feature.quantiles:
        knots = np.asarray(feature.quantiles, dtype=np.float64)
    else:
        knots = feature.mean + feature.std * np.linspace(-3.0, 3.0, 13)
    return float(knots[(i * 7 + j * 3) % len(knots)])


def _category(cat: CategoricalFeature, j: int, i: int) -> str | None:
    choices: list[str | None] = [*cat.vocabulary, None, UNSEEN]
    return choices[(i + j) % len(choices)]


def _no_list(row: int) -> bool:
    """Every ninth row's history is None rather than a (possibly empty) list."""
    return row % 9 == 4
