"""Logged decisions as arrays: what off-policy evaluation and learning read.

One row per logged decision with its reward joined: the context (the policy's encoded
inputs, as ``libs.preprocessing.transform`` produced them for the model), the eligible
actions, the action taken, the probability with which the logging policy took it, the
reward, and the weight of the log itself (1 / the log-sampling rate). Rows may come from
several policy versions or arms: each row's propensity is that of the policy that decided
it, which is all the estimators need. Construction checks every array and says which row
is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from libs.decisioning.distribution import SUM_TOLERANCE, check_distribution

_DTYPES = {
    "numeric": np.float64, "categorical": np.int64, "actions": np.int64,
    "propensities": np.float64, "rewards": np.float64, "eligible": np.bool_,
    "sample_weights": np.float64, "logging_probabilities": np.float64,
}  # fmt: skip


class LogsError(ValueError):
    """Logged decisions that cannot be evaluated as they are; the message says why."""


@dataclass(frozen=True)
class LoggedDecisions:
    """Logged bandit feedback: contexts, eligible actions, actions, propensities, rewards."""

    numeric: np.ndarray
    """float [rows, numeric features], finite (the policy's ``numeric`` input)."""
    categorical: np.ndarray
    """int64 [rows, categorical features], 0 for missing or unseen (``categorical`` input)."""
    actions: np.ndarray
    """int [rows]: the column (in ``action_names``) of the action taken."""
    propensities: np.ndarray
    """float [rows] in (0, 1]: P(logging policy takes ``actions[i]`` | row i)."""
    rewards: np.ndarray
    """float [rows], finite: the reward joined to each decision."""
    eligible: np.ndarray
    """bool [rows, actions]: the actions the logging policy could take for the row."""
    action_names: tuple[str, ...]
    """The action set, in column order."""
    sample_weights: np.ndarray | None = None
    """float [rows] > 0: 1 / the log-sampling rate each row was kept at; None: all 1."""
    logging_probabilities: np.ndarray | None = None
    """float [rows, actions]: the logging policy's whole distribution, when logged; lets
    evaluation check the propensities and report a target's mass where the logging policy
    never acts (on which every estimator here is blind)."""

    def __post_init__(self) -> None:
        # Fixed dtypes, so that e.g. an int 0/1 eligible mask cannot turn ``~`` into -1/-2.
        for name, dtype in _DTYPES.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, np.asarray(value, dtype=dtype))
        _validate(self)

    @property
    def rows(self) -> int:
        return len(self.actions)

    def weights(self) -> np.ndarray:
        """``sample_weights`` or ones."""
        return np.ones(self.rows) if self.sample_weights is None else self.sample_weights

    def take(self, index: np.ndarray) -> LoggedDecisions:
        """The rows at ``index`` (an int array or a boolean mask)."""

        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return LoggedDecisions(
            self.numeric[index], self.categorical[index], self.actions[index],
            self.propensities[index], self.rewards[index], self.eligible[index],
            self.action_names, cut(self.sample_weights), cut(self.logging_probabilities),
        )  # fmt: skip


def _validate(logs: LoggedDecisions) -> None:
    n, a = len(logs.actions), len(logs.action_names)
    if n == 0:
        raise LogsError("no logged decisions; evaluation needs at least one rewarded decision")
    shapes = {
        "numeric": (logs.numeric.ndim == 2 and len(logs.numeric) == n),
        "categorical": (logs.categorical.ndim == 2 and len(logs.categorical) == n),
        "propensities": logs.propensities.shape == (n,),
        "rewards": logs.rewards.shape == (n,),
        "eligible": logs.eligible.shape == (n, a),
        "sample_weights": logs.sample_weights is None or logs.sample_weights.shape == (n,),
        "logging_probabilities": logs.logging_probabilities is None
        or logs.logging_probabilities.shape == (n, a),
    }
    wrong = [name for name, ok in shapes.items() if not ok]
    if logs.actions.ndim != 1 or wrong:
        raise LogsError(
            f"{n} actions over {a} action names, but {wrong or ['actions']} have the wrong "
            f"shape (rows first; [rows, {a}] for eligible / logging_probabilities)"
        )
    _rows_where(~np.isfinite(logs.numeric).all(axis=1), "has a non-finite numeric feature")
    _rows_where((logs.actions < 0) | (logs.actions >= a), f"has an action outside 0..{a - 1}")
    taken = logs.eligible[np.arange(n), logs.actions]
    _rows_where(~taken, "took an action its eligible mask excludes")
    p = logs.propensities
    _rows_where(~((p > 0) & (p <= 1)), "has a propensity outside (0, 1]")
    _rows_where(~np.isfinite(logs.rewards), "has a non-finite reward")
    if logs.sample_weights is not None:
        w = logs.sample_weights
        _rows_where(~((w > 0) & np.isfinite(w)), "has a sample weight that is not > 0")
    if logs.logging_probabilities is not None:
        check_distribution(logs.logging_probabilities, logs.eligible, what="logging policy")
        logged = logs.logging_probabilities[np.arange(n), logs.actions]
        _rows_where(
            np.abs(logged - p) > SUM_TOLERANCE,
            "has a propensity that differs from its logged distribution's probability of the "
            "action taken",
        )


def _rows_where(bad: np.ndarray, problem: str) -> None:
    if bad.any():
        rows = np.flatnonzero(bad)
        raise LogsError(
            f"{len(rows)} logged decisions {problem} (first: row {int(rows[0])}); fix or drop "
            f"them before evaluating"
        )
