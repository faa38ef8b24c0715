"""Off-policy evaluation: what a target policy would have earned on the logged decisions.

With ``w_i = π(a_i|x_i) / p_i`` (the target's probability of the logged action over the
logged propensity), optionally clipped at ``clip``, and sample weights ``s_i`` (1 / the
log-sampling rate):

- **IPS** ``Σ s·w·r / Σ s`` — unbiased, variance grows with the weights.
- **SNIPS** ``Σ s·w·r / Σ s·w`` — self-normalised: slightly biased (O(1/n)), much lower
  variance when weights are large; invariant to adding a constant to the rewards.
- **DR** ``Σ s·(Σ_a π(a|x) q̂(x,a) + w·(r - q̂(x,a_i))) / Σ s`` with a cross-fitted q̂
  (``reward_model.py``) — unbiased whatever q̂ is, lower variance the better q̂ is.
- **DM** ``Σ s·Σ_a π(a|x) q̂(x,a) / Σ s`` — a diagnostic only: biased when q̂ is, and
  its interval ignores q̂'s own error.
- **logging** ``Σ s·r / Σ s`` — the logging policy's realised value (on-policy mean).
- **dr_gain** DR minus logging, with the paired interval: what a promotion gate needs.

Clipping bounds the variance at the price of a bias: IPS loses ``E[(w - clip)⁺ · r]``
(downwards for positive rewards), DR only ``E[(w - clip)⁺ · (r - q̂)]``; the report says
how many rows were clipped. Intervals come from the influence terms (``intervals.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from libs.decisioning.distribution import check_distribution
from libs.decisioning.intervals import Estimate, ratio
from libs.decisioning.logs import LoggedDecisions
from libs.decisioning.reward_model import RewardModelConfig, cross_fit

ESTIMATORS = ("ips", "snips", "dr", "dm", "logging", "dr_gain")


@dataclass(frozen=True)
class EvaluationConfig:
    """How to evaluate: interval level, weight clipping, reward model."""

    confidence: float = 0.95
    """Two-sided level of every interval."""
    clip: float | None = None
    """Cap on importance weights (None: unclipped, unbiased). Biases IPS/SNIPS/DR (above)."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The cross-fitted q̂ of DR and DM."""

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be within (0, 1), got {self.confidence}")
        if self.clip is not None and not self.clip >= 1.0:
            raise ValueError(f"clip must be >= 1 (a cap on importance weights), got {self.clip}")


@dataclass(frozen=True)
class Report:
    """Every estimate of one target policy's value on one set of logs, with diagnostics."""

    rows: int
    """Logged decisions evaluated."""
    ips: Estimate
    """Inverse propensity scoring."""
    snips: Estimate
    """Self-normalised IPS."""
    dr: Estimate
    """Doubly robust with the cross-fitted reward model: the headline."""
    dm: Estimate
    """Direct method (reward model alone); diagnostic, no coverage claim."""
    logging: Estimate
    """The logging policy's realised value on the same rows."""
    dr_gain: Estimate
    """DR minus logging, with the paired interval."""
    mean_weight: Estimate
    """Mean importance weight (unclipped): 1 in expectation; an interval excluding 1
    means the propensities or the target are wrong."""
    effective_sample_size: float
    """``(Σ s·w)² / Σ (s·w)²``: how many on-policy rows the weighted logs are worth."""
    max_weight: float
    """Largest unclipped importance weight."""
    clip: float | None
    """The cap applied, if any."""
    clipped_rows: int
    """Rows whose weight the cap lowered."""
    unsupported_mass: float | None
    """Mean target probability on actions the logging policy could not take (needs the
    logged distributions; None without). Every estimator is blind there: keep it ~0."""
    confidence: float
    """The intervals' level."""
    reward_model: str
    """``kind/folds`` of q̂."""

    def metrics(self, prefix: str = "ope") -> dict[str, float]:
        """Flat metrics for registration: ``ope.dr.value``, ``ope.dr.lower``, … ``ope.ess``."""
        out: dict[str, float] = {f"{prefix}.rows": float(self.rows)}
        for name in ESTIMATORS:
            estimate: Estimate = getattr(self, name)
            for part in ("value", "lower", "upper", "std_error"):
                out[f"{prefix}.{name}.{part}"] = float(getattr(estimate, part))
        out[f"{prefix}.mean_weight.value"] = self.mean_weight.value
        out[f"{prefix}.ess"] = self.effective_sample_size
        out[f"{prefix}.max_weight"] = self.max_weight
        out[f"{prefix}.clipped_rows"] = float(self.clipped_rows)
        out[f"{prefix}.confidence"] = self.confidence
        if self.unsupported_mass is not None:
            out[f"{prefix}.unsupported_mass"] = self.unsupported_mass
        return out


def evaluate(
    logs: LoggedDecisions,
    target: np.ndarray,
    config: EvaluationConfig | None = None,
    *,
    reward_predictions: np.ndarray | None = None,
) -> Report:
    """Estimate the value of ``target`` (``[rows, actions]`` probabilities) on ``logs``.

    ``reward_predictions`` (``[rows, actions]``, cross-fitted) skips fitting q̂: pass
    ``cross_fit(logs, ...)`` once to evaluate several targets on the same logs.
    """
    config = config or EvaluationConfig()
    target = np.asarray(target, dtype=np.float64)
    if target.shape != logs.eligible.shape:
        raise ValueError(
            f"target probabilities are {target.shape}; they must be [rows, actions] = "
            f"{logs.eligible.shape}, one row per logged decision"
        )
    check_distribution(target, logs.eligible, what="target policy")
    q = cross_fit(logs, config.reward_model) if reward_predictions is None else reward_predictions
    if q.shape != target.shape:
        raise ValueError(f"reward predictions are {q.shape}, expected {target.shape}")
    rows = np.arange(logs.rows)
    s, r = logs.weights(), logs.rewards
    raw = target[rows, logs.actions] / logs.propensities
    w = raw if config.clip is None else np.minimum(raw, config.clip)
    direct = np.einsum("ij,ij->i", target, q)
    dr = ratio(s * (direct + w * (r - q[rows, logs.actions])), s)
    logging = ratio(s * r, s)
    level = config.confidence
    sw = s * w
    return Report(
        rows=logs.rows,
        ips=ratio(sw * r, s).estimate(level),
        snips=ratio(sw * r, sw).estimate(level),
        dr=dr.estimate(level),
        dm=ratio(s * direct, s).estimate(level),
        logging=logging.estimate(level),
        dr_gain=dr.minus(logging, level),
        mean_weight=ratio(s * raw, s).estimate(level),
        effective_sample_size=float(sw.sum() ** 2 / np.dot(sw, sw)) if sw.any() else 0.0,
        max_weight=float(raw.max()),
        clip=config.clip,
        clipped_rows=0 if config.clip is None else int((raw > config.clip).sum()),
        unsupported_mass=_unsupported(logs, target),
        confidence=level,
        reward_model=f"{config.reward_model.kind}/{config.reward_model.folds}",
    )


def _unsupported(logs: LoggedDecisions, target: np.ndarray) -> float | None:
    if logs.logging_probabilities is None:
        return None
    mass = np.where(logs.logging_probabilities > 0, 0.0, target).sum(axis=1)
    value = float(mass.mean())
    return 0.0 if math.isclose(value, 0.0, abs_tol=1e-15) else value
