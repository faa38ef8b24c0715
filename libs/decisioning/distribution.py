"""From scores to probabilities: the policy's exact distribution over eligible actions.

Vectorised over a batch: ``scores`` is ``[rows, actions]`` in the spec's action order,
``eligible`` a boolean mask of the same shape. Each row's probabilities are zero outside
its eligible actions and sum to 1 over them (to float rounding, ~1e-16; the checks here
allow 1e-9). The best action is the highest-scoring eligible one, ties going to the
lowest column (as the first inference policy did).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from libs.decisioning.spec import Band, EpsilonGreedy, PolicySpec, PolicySpecError

SUM_TOLERANCE = 1e-9
"""How far from 1 a row of probabilities may sum (float rounding only)."""


def eligible_mask(spec: PolicySpec, eligible: Sequence[Sequence[str]]) -> np.ndarray:
    """``[rows, actions]`` booleans from each row's eligible action names (empty: all)."""
    mask = np.zeros((len(eligible), len(spec.actions)), dtype=bool)
    for i, names in enumerate(eligible):
        if not names:
            mask[i] = True
        for name in names:
            mask[i, spec.index(name)] = True
    return mask


def distribution(
    spec: PolicySpec, scores: np.ndarray, eligible: np.ndarray | None = None
) -> np.ndarray:
    """``[rows, actions]`` probabilities of each action under ``spec`` for these scores."""
    scores, eligible = _checked(spec, scores, eligible)
    masked = np.where(eligible, scores, -np.inf)
    rows = np.arange(len(scores))
    best = np.argmax(masked, axis=1)
    greedy = np.zeros_like(scores)
    greedy[rows, best] = 1.0
    k = eligible.sum(axis=1, keepdims=True).astype(np.float64)
    exploration = spec.exploration
    if isinstance(exploration, EpsilonGreedy):
        explore = (1.0 - exploration.epsilon) * greedy + np.where(
            eligible, exploration.epsilon / k, 0.0
        )
    else:
        top = masked[rows, best][:, None]
        weights = np.where(eligible, np.exp((masked - top) / exploration.temperature), 0.0)
        softmax = weights / weights.sum(axis=1, keepdims=True)
        floor = exploration.floor
        explore = np.where(eligible, floor + (1.0 - k * floor) * softmax, 0.0)
    if exploration.band is not None:
        inside = _in_band(spec, exploration.band, scores, masked, best)
        explore = np.where(inside[:, None], explore, greedy)
    return explore / explore.sum(axis=1, keepdims=True)


def check_distribution(
    probabilities: np.ndarray, eligible: np.ndarray | None = None, *, what: str = "policy"
) -> None:
    """Raise ``PolicySpecError`` unless every row is a distribution over its eligible actions."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise PolicySpecError(f"{what} probabilities must be [rows, actions], got {p.shape}")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PolicySpecError(
            f"{what} probabilities of row {i} are not all finite and >= 0: {p[i].tolist()}"
        )
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise PolicySpecError(
            f"{what} probabilities of row {i} sum to {float(sums[i])!r}, not 1 "
            f"(±{SUM_TOLERANCE:g}); {int(off.sum())} of {len(p)} rows are off. Normalise each "
            f"row over its eligible actions"
        )
    if eligible is not None:
        outside = (np.where(eligible, 0.0, p) > 0).any(axis=1)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise PolicySpecError(
                f"{what} puts probability on an ineligible action in row {i} "
                f"(probabilities {p[i].tolist()}, eligible {np.asarray(eligible)[i].tolist()}); "
                f"{int(outside.sum())} rows do. Give ineligible actions probability 0"
            )


def _checked(
    spec: PolicySpec, scores: np.ndarray, eligible: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[None, :]
    if scores.ndim != 2 or scores.shape[1] != len(spec.actions):
        raise PolicySpecError(
            f"scores must be [rows, {len(spec.actions)}] (one column per action of "
            f"{spec.name!r}), got {scores.shape}"
        )
    if eligible is None:
        eligible = np.ones(scores.shape, dtype=bool)
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.ndim == 1:
        eligible = np.broadcast_to(eligible, scores.shape)
    if eligible.shape != scores.shape:
        raise PolicySpecError(
            f"eligible mask {eligible.shape} does not match scores {scores.shape}"
        )
    none = ~eligible.any(axis=1)
    if none.any():
        raise PolicySpecError(
            f"row {int(np.flatnonzero(none)[0])} has no eligible action ({int(none.sum())} rows "
            f"have none); every row needs at least one"
        )
    unusable = eligible & ~np.isfinite(scores)
    if unusable.any():
        i = int(np.flatnonzero(unusable.any(axis=1))[0])
        raise PolicySpecError(
            f"row {i} has a non-finite score for an eligible action: {scores[i].tolist()}"
        )
    return scores, eligible


def _in_band(
    spec: PolicySpec, band: Band, scores: np.ndarray, masked: np.ndarray, best: np.ndarray
) -> np.ndarray:
    rows = np.arange(len(scores))
    if band.reference == "best":
        reference = masked[rows, best]
    elif band.reference == "margin":
        runner_up = masked.copy()
        runner_up[rows, best] = -np.inf
        second = runner_up.max(axis=1)
        reference = np.where(np.isfinite(second), masked[rows, best] - second, 0.0)
    else:
        reference = scores[:, spec.index(band.reference)]
    return (reference >= band.low) & (reference <= band.high)
