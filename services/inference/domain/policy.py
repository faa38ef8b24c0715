"""Choosing among actions with a known propensity, for models that score actions.

A version whose tags name its actions (``policy.actions``: comma-separated, one per
output column) is a policy: per row it chooses the best-scoring eligible action, and with
probability epsilon (``policy.epsilon``, default 0) a uniformly random eligible one. The
random draw comes from a hash of the decision id, so a decision replays identically,
and the propensity logged is the exact probability that this policy chose that action —
what inverse-propensity (off-policy) evaluation divides by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.inference.domain.routing import unit_hash


@dataclass(frozen=True)
class Policy:
    """The actions a policy model chooses among, and how much it explores."""

    actions: tuple[str, ...]
    """One per output column, in order."""
    epsilon: float = 0.0
    """Probability of a uniformly random eligible action instead of the best one."""

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Policy | None:
        text = tags.get("policy.actions", "")
        actions = tuple(a.strip() for a in text.split(",") if a.strip())
        if not actions:
            return None
        epsilon = float(tags.get("policy.epsilon", "0") or 0)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"policy.epsilon must be within [0, 1], got {epsilon}")
        return cls(actions, epsilon)


@dataclass(frozen=True)
class Choice:
    action: str
    propensity: float
    """P(this policy chooses ``action`` | this row)."""


def choose(policy: Policy, scores: np.ndarray, eligible: Sequence[str], decision_id: str) -> Choice:
    """The action for one row of ``scores`` (one per action) among ``eligible`` (empty: all)."""
    if len(scores) != len(policy.actions):
        raise ValueError(f"{len(scores)} scores for {len(policy.actions)} actions")
    allowed = [i for i, a in enumerate(policy.actions) if not eligible or a in eligible]
    if not allowed:
        raise ValueError(f"none of the eligible actions {list(eligible)} is one of this model's")
    best = max(allowed, key=lambda i: (scores[i], -i))
    k = len(allowed)
    explore = policy.epsilon > 0 and unit_hash(f"explore\x1e{decision_id}") < policy.epsilon
    pick = allowed[int(unit_hash(f"action\x1e{decision_id}") * k)] if explore else best
    share = policy.epsilon / k
    propensity = (1.0 - policy.epsilon + share) if pick == best else share
    return Choice(policy.actions[pick], propensity)
