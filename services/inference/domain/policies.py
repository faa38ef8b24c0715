"""A policy as inference serves it: ``libs.decisioning``'s spec, where its scores are, and
each row's decision (distribution, hashed draw, propensity) — pure, no I/O.

A version is a policy when it carries ``policy.json`` (``PolicySpec``) or, registered
before that existed, the tags ``policy.actions``/``policy.epsilon`` (``PolicySpec.from_tags``,
same distribution and propensities). ``decide`` is the one place a served decision is
made: ``distribution`` (exact, zero on ineligible actions), then ``draw`` (the inverse
CDF at ``u = hash(decision id, salt)``), then a check that every row is a distribution —
a row that is not (non-finite scores) is refused, never logged with a wrong propensity.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from libs.decisioning.distribution import check_distribution, distribution, eligible_mask
from libs.decisioning.draw import draw
from libs.decisioning.spec import PolicySpec, PolicySpecError


class PolicyRefused(ValueError):
    """A request the policy cannot decide (unknown eligible action, non-finite scores)."""


@dataclass(frozen=True)
class ServedPolicy:
    """A loaded policy version: its spec and which of the flattened outputs are its scores."""

    spec: PolicySpec
    start: int
    """First column of the spec's output among the version's flattened outputs."""
    spec_sha256: str
    """sha256 of the canonical ``policy.json`` (``PolicySpec.to_json``)."""
    exploration_json: str

    @property
    def actions(self) -> tuple[str, ...]:
        return self.spec.action_names

    @classmethod
    def of(cls, spec: PolicySpec, start: int = 0) -> ServedPolicy:
        canonical = spec.to_json()
        exploration = json.loads(canonical)["exploration"]
        return cls(
            spec,
            start,
            hashlib.sha256(canonical).hexdigest(),
            json.dumps(exploration, sort_keys=True, separators=(",", ":")),
        )


def locate(
    spec: PolicySpec, graph_outputs: Sequence[str], widths: Sequence[int], version: str
) -> ServedPolicy:
    """Where ``spec``'s scores are among the outputs (``widths``: each output's columns).

    The spec names its output; a version with a single output (e.g. registered with the
    older tags) uses it whatever its name. ValueError says what does not fit.
    """
    k = len(spec.actions)
    if spec.output in graph_outputs:
        at = list(graph_outputs).index(spec.output)
    elif len(graph_outputs) == 1:
        at = 0
    else:
        raise ValueError(
            f"policy.json names output {spec.output!r} but {version} has {list(graph_outputs)}"
        )
    if widths[at] != k:
        raise ValueError(
            f"{version}'s output {graph_outputs[at]!r} has {widths[at]} columns per row but the "
            f"policy has {k} actions {list(spec.action_names)}: one score per action"
        )
    return ServedPolicy.of(spec, int(sum(widths[:at])))


@dataclass(frozen=True)
class Decisions:
    """Per row: the chosen action, its propensity and the whole distribution."""

    actions: list[str]
    propensities: list[float]
    probabilities: list[list[float]]
    scores: list[list[float]]
    """The policy's score per action (its output columns only)."""


def decide(
    policy: ServedPolicy,
    outputs: Sequence[Sequence[float]],
    eligible: Sequence[Sequence[str]],
    decision_ids: Sequence[str],
) -> Decisions:
    """Decisions for rows of flattened ``outputs``; ``PolicyRefused`` says why not."""
    k = len(policy.spec.actions)
    scores = np.asarray(outputs, dtype=np.float64)[:, policy.start : policy.start + k]
    try:
        mask = eligible_mask(policy.spec, eligible)
        p = distribution(policy.spec, scores, mask)
        check_distribution(p, mask, what=f"policy {policy.spec.name!r}")
    except PolicySpecError as exc:
        raise PolicyRefused(str(exc)) from None
    columns, propensities = draw(p, decision_ids, policy.spec.salt)
    names = policy.spec.action_names
    return Decisions(
        [names[c] for c in columns.tolist()], propensities.tolist(), p.tolist(), scores.tolist()
    )
