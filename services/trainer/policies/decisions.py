"""Logged decisions (inference's ``LoggedDecision``) as arrays for evaluation — pure.

Each decision's context is re-encoded with the policy's own ``preprocessing.json`` from
the exact feature values it was decided on. What is left out is counted, never guessed:

- ``pending``: the reward definition's censoring window is still open (no reward yet);
- ``censored``: the window closed without a reward (it will never count). Leaving these
  out biases the estimates when whether a reward arrives depends on the action: a reward
  definition should publish explicit zero rewards rather than none;
- ``bad_distribution``: the logged distribution does not sum to 1, puts mass on an
  ineligible action, or disagrees with the logged propensity (a corrupted log or a
  policy bug: its weight 1/propensity cannot be trusted).
A decision over another action set than the policy's cannot be evaluated against it:
``DecisionLogError`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import message_pb2 as im
from lathe.inference.v1 import request_response_pb2 as irr
from libs.decisioning.logs import LoggedDecisions
from libs.preprocessing import PreprocessingSpec, transform

SUM_TOLERANCE = 1e-9


class DecisionLogError(ValueError):
    """Logs that cannot be evaluated against this policy; the message says why."""


@dataclass
class Exclusions:
    pending: int = 0
    censored: int = 0
    bad_distribution: int = 0
    examples: list[str] = field(default_factory=list)
    """A few of the bad rows, for the job's message."""


@dataclass(frozen=True)
class Assembled:
    logs: LoggedDecisions
    decide_times: np.ndarray
    """float seconds since the epoch, per row (for a time-ordered holdout)."""
    versions: tuple[int, ...]
    """The policy versions that made the decisions."""
    excluded: Exclusions


def assemble(
    decisions: Sequence[irr.LoggedDecision],
    preprocessing: PreprocessingSpec,
    action_names: Sequence[str],
) -> Assembled:
    names = tuple(action_names)
    excluded = Exclusions()
    kept: list[irr.LoggedDecision] = []
    for logged in decisions:
        status = logged.reward_status
        if status == im.REWARD_STATUS_PENDING:
            excluded.pending += 1
            continue
        if status != im.REWARD_STATUS_JOINED:
            excluded.censored += 1
            continue
        d = logged.decision
        if tuple(d.action_names) != names:
            raise DecisionLogError(
                f"decision {d.decision_id} (version {d.model_version}) chose among "
                f"{list(d.action_names)} but the policy has {list(names)}: evaluate a policy "
                "over the logs' actions, or choose a window of decisions over the same actions"
            )
        problem = _distribution_problem(d)
        if problem:
            excluded.bad_distribution += 1
            if len(excluded.examples) < 3:
                excluded.examples.append(f"{d.decision_id}: {problem}")
            continue
        kept.append(logged)
    if not kept:
        raise DecisionLogError(
            f"no usable decisions: {excluded.pending} await their reward, "
            f"{excluded.censored} are censored, {excluded.bad_distribution} have a bad "
            "distribution; choose a window whose rewards have arrived"
        )
    columns = _columns(kept, preprocessing)
    encoded = transform(preprocessing, columns)
    k = len(names)
    index = {n: i for i, n in enumerate(names)}
    eligible = np.ones((len(kept), k), dtype=bool)
    for i, logged in enumerate(kept):
        allowed = logged.decision.eligible_actions
        if allowed:
            eligible[i] = False
            for name in allowed:
                eligible[i, index[name]] = True
    logs = LoggedDecisions(
        encoded.numeric,
        encoded.categorical,
        np.array([index[x.decision.chosen_action] for x in kept], dtype=np.int64),
        np.array([x.decision.propensity for x in kept]),
        np.array([x.reward for x in kept]),
        eligible,
        names,
        sample_weights=np.array([1.0 / x.decision.sample_rate for x in kept]),
        logging_probabilities=np.array([list(x.decision.action_probabilities) for x in kept]),
    )
    times = np.array(
        [x.decision.predict_time.seconds + x.decision.predict_time.nanos / 1e9 for x in kept]
    )
    versions = tuple(sorted({int(x.decision.model_version) for x in kept}))
    return Assembled(logs, times, versions, excluded)


def newest(times: np.ndarray, share: float) -> np.ndarray:
    """A holdout mask of the newest ``share`` of the rows (at least one, not all)."""
    count = min(max(1, round(len(times) * share)), len(times) - 1)
    order = np.argsort(times, kind="stable")
    mask = np.zeros(len(times), dtype=bool)
    mask[order[len(times) - count :]] = True
    return mask


def _distribution_problem(d: object) -> str:
    p = list(d.action_probabilities)  # type: ignore[attr-defined]
    if not p or not all(math.isfinite(x) and x >= 0 for x in p):
        return f"probabilities {p} are not all finite and >= 0"
    total = math.fsum(p)
    if abs(total - 1.0) > SUM_TOLERANCE:
        return f"probabilities sum to {total!r}, not 1"
    names = list(d.action_names)  # type: ignore[attr-defined]
    if d.chosen_action not in names:  # type: ignore[attr-defined]
        return f"chosen action {d.chosen_action!r} is not one of {names}"  # type: ignore[attr-defined]
    taken = p[names.index(d.chosen_action)]  # type: ignore[attr-defined]
    if not math.isclose(taken, d.propensity, rel_tol=1e-9, abs_tol=1e-12) or taken <= 0:  # type: ignore[attr-defined]
        return f"propensity {d.propensity!r} but the distribution gives {taken!r}"  # type: ignore[attr-defined]
    eligible = set(d.eligible_actions)  # type: ignore[attr-defined]
    if eligible and any(x > 0 and n not in eligible for n, x in zip(names, p, strict=True)):
        return "probability on an ineligible action"
    return ""


def _columns(
    kept: Sequence[irr.LoggedDecision], preprocessing: PreprocessingSpec
) -> dict[str, list[object]]:
    wanted = preprocessing.feature_names
    categorical = {c.name for c in preprocessing.categorical}
    columns: dict[str, list[object]] = {name: [] for name in wanted}
    for logged in kept:
        d = logged.decision
        at = {name: i for i, name in enumerate(d.feature_names)}
        missing = [n for n in wanted if n not in at]
        if missing:
            raise DecisionLogError(
                f"decision {d.decision_id} was made without features {missing} that the "
                "policy reads; evaluate it on decisions of a policy with the same features"
            )
        for name in wanted:
            columns[name].append(_plain(d.feature_values[at[name]], name in categorical))
    return columns


def _plain(value: fs.Value, categorical: bool) -> object:
    """The value as inference fed it to the preprocessing (``app.model.rows_from_reply``):
    categories as text, numbers as floats."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "timestamp_value":
        return value.timestamp_value.ToJsonString()
    plain = getattr(value, kind)
    if categorical:
        return plain if kind == "string_value" else str(plain)
    return float(plain) if kind != "string_value" else plain
