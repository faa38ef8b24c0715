"""Holding a runtime's outputs to ONNX Runtime's on the same rows.

Tolerances are absolute, on the outputs (probabilities here): fp32 engines must agree to
1e-5 (what the trainer already holds ONNX Runtime to against torch), fp16 graphs to 5e-3
(half precision carries ~3 decimal digits; scores that close rank loans the same way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOLERANCES = {"fp32": 1e-5, "fp16": 5e-3}


@dataclass(frozen=True)
class ParityResult:
    """How far a candidate's outputs are from the reference's."""

    max_abs_diff: float
    """Largest |candidate - reference| over every output value (inf on a shape mismatch
    or a non-finite value)."""
    tolerance: float
    worst_row: int
    """Row of the largest difference (-1 when the shapes differ)."""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def explain(self, what: str) -> str:
        if self.ok:
            return f"{what} matches ONNX Runtime: max |diff| {self.max_abs_diff:.3g}"
        return (
            f"{what} disagrees with ONNX Runtime on the fixed rows: max |diff| "
            f"{self.max_abs_diff:.3g} > {self.tolerance:g} (row {self.worst_row}){self.detail}"
        )


def tolerance(precision: str) -> float:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(
            f"precision must be one of {sorted(TOLERANCES)}, got {precision!r}"
        ) from None


def compare(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], tol: float
) -> ParityResult:
    """Compare outputs output by output; rows are the first axis."""
    if len(reference) != len(candidate):
        return ParityResult(
            float("inf"), tol, -1, f"; {len(candidate)} outputs, expected {len(reference)}"
        )
    worst, worst_row = 0.0, 0
    for ref, got in zip(reference, candidate, strict=True):
        ref64 = np.asarray(ref, dtype=np.float64)
        got64 = np.asarray(got, dtype=np.float64)
        if ref64.shape != got64.shape:
            return ParityResult(
                float("inf"), tol, -1, f"; output shape {got64.shape}, expected {ref64.shape}"
            )
        if not np.all(np.isfinite(got64)) and np.all(np.isfinite(ref64)):
            row = int(np.argwhere(~np.isfinite(got64))[0][0])
            return ParityResult(float("inf"), tol, row, "; the candidate produced NaN or inf")
        if ref64.size == 0:
            continue
        diff = np.abs(got64 - ref64).reshape(ref64.shape[0], -1).max(axis=1)
        row = int(np.argmax(diff))
        if diff[row] > worst:
            worst, worst_row = float(diff[row]), row
    return ParityResult(worst, tol, worst_row)
