"""The ridge reward model's fixed feature map: numbers standardised with hinges, one-hot categories.

Per numeric column ``z`` (standardised over all rows): ``z`` and the hinges
``max(z - k, 0)`` for ``k`` in -1, 0, 1 — a piecewise-linear fit of any monotone or
U-shaped effect; per categorical column: one indicator per level seen (the most frequent
``MAX_LEVELS``); and an intercept. Fitted on contexts only (no rewards), so fitting it on
all rows before cross-fitting leaks nothing about the outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KNOTS = (-1.0, 0.0, 1.0)
MAX_LEVELS = 32


@dataclass(frozen=True)
class FeatureMap:
    """How contexts become the ridge model's columns."""

    mean: np.ndarray
    """float [numeric]: subtracted."""
    scale: np.ndarray
    """float [numeric]: divided by (1 for a constant column)."""
    levels: tuple[np.ndarray, ...]
    """Per categorical column, the codes that get an indicator."""

    @property
    def width(self) -> int:
        return 1 + len(self.mean) * (1 + len(KNOTS)) + sum(len(v) for v in self.levels)

    @classmethod
    def fit(cls, numeric: np.ndarray, categorical: np.ndarray) -> FeatureMap:
        mean = numeric.mean(axis=0) if len(numeric) else np.zeros(numeric.shape[1])
        std = numeric.std(axis=0) if len(numeric) else np.ones(numeric.shape[1])
        levels = []
        for j in range(categorical.shape[1]):
            codes, counts = np.unique(categorical[:, j], return_counts=True)
            levels.append(np.sort(codes[np.argsort(-counts, kind="stable")[:MAX_LEVELS]]))
        return cls(mean, np.where(std > 0, std, 1.0), tuple(levels))

    def transform(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """float64 [rows, width]."""
        z = (numeric - self.mean) / self.scale
        blocks = [np.ones((len(z), 1)), z]
        blocks.extend(np.maximum(z - k, 0.0) for k in KNOTS)
        for j, codes in enumerate(self.levels):
            blocks.append((categorical[:, j : j + 1] == codes[None, :]).astype(np.float64))
        return np.concatenate(blocks, axis=1)
