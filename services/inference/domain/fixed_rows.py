"""Representative rows made from a model's own ``preprocessing.json``, for warm-up and parity.

Every version is checked on rows derived from what it was fitted on, so no extra artifact
is needed and the rows are the same wherever the version loads: each numeric feature
walks its training quantiles (or mean +- 3 standard deviations) with a missing value
every eighth row, and each categorical feature cycles through its vocabulary, a missing
value and one it never saw. Rows are deterministic; features are offset from one another
so rows are not all "low" or all "high" at once.
"""

from __future__ import annotations

import numpy as np

from libs.preprocessing import PreprocessingSpec

UNSEEN = "\x00lathe-unseen"


def representative_columns(spec: PreprocessingSpec, rows: int = 64) -> dict[str, list[object]]:
    """Feature name -> ``rows`` raw values (None for missing), as the feature store gives them."""
    columns: dict[str, list[object]] = {}
    for j, feature in enumerate(spec.numeric):
        if feature.quantiles:
            knots = np.asarray(feature.quantiles, dtype=np.float64)
        else:
            knots = feature.mean + feature.std * np.linspace(-3.0, 3.0, 13)
        values: list[object] = []
        for i in range(rows):
            if (i + j) % 8 == 7:
                values.append(None)
            else:
                values.append(float(knots[(i * 7 + j * 3) % len(knots)]))
        columns[feature.name] = values
    for j, cat in enumerate(spec.categorical):
        choices: list[object] = [*cat.vocabulary, None, UNSEEN]
        columns[cat.name] = [choices[(i + j) % len(choices)] for i in range(rows)]
    return columns
