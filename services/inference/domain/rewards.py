"""Outcomes (``lathe.ingest.outcomes``) as rewards of logged decisions — pure rules.

An outcome is a JSON object::

    {"decision_id": "0193...", "reward": 0.12, "reward_time": "2026-03-01T10:00:00Z",
     "reward_definition": "repaid_margin", "reward_definition_version": 1}

It joins its decision at most once per reward definition (name and version). What is not
joined is refused with a reason, recorded and counted, never joined later:

- ``malformed``: not such an object (the reason says which field);
- ``unknown_decision``: no logged decision has the id (never made, sampled out of the
  logs, or a typo; a reward published before its decision was written — logs are
  written within ``flush_interval_s`` of the decision — is refused too: publish
  outcomes after the decision);
- ``before_decision``: reward_time earlier than the decision;
- ``past_window``: reward_time later than the decision + the definition's censoring
  window (the decision is censored for that definition: no reward will ever count);
- ``duplicate``: the decision already has a reward of this definition (the first stands).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

MALFORMED = "malformed"
UNKNOWN_DECISION = "unknown_decision"
BEFORE_DECISION = "before_decision"
PAST_WINDOW = "past_window"
DUPLICATE = "duplicate"
REASONS = (MALFORMED, UNKNOWN_DECISION, BEFORE_DECISION, PAST_WINDOW, DUPLICATE)
_FIELDS = {
    "decision_id",
    "reward",
    "reward_time",
    "reward_definition",
    "reward_definition_version",
}


class MalformedOutcome(ValueError):
    """Not an outcome; the message says which field and how."""


@dataclass(frozen=True)
class Outcome:
    decision_id: str
    reward: float
    reward_time: datetime
    definition: str
    version: int


def parse_outcome(data: bytes) -> Outcome:
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedOutcome(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedOutcome("not a JSON object")
    missing = sorted(_FIELDS - set(document))
    if missing:
        raise MalformedOutcome(f"missing {missing}; an outcome has {sorted(_FIELDS)}")
    decision_id, definition = document["decision_id"], document["reward_definition"]
    if not isinstance(decision_id, str) or not decision_id:
        raise MalformedOutcome("decision_id must be a non-empty string")
    if not isinstance(definition, str) or not definition:
        raise MalformedOutcome("reward_definition must be a non-empty string")
    version = document["reward_definition_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MalformedOutcome(
            f"reward_definition_version must be an integer >= 1, got {version!r}"
        )
    reward = document["reward"]
    if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward):
        raise MalformedOutcome(f"reward must be a finite number, got {reward!r}")
    text = document["reward_time"]
    try:
        at = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise MalformedOutcome(f"reward_time must be an RFC 3339 time, got {text!r}") from None
    if at.tzinfo is None:
        raise MalformedOutcome(f"reward_time needs a UTC offset (e.g. 'Z'), got {text!r}")
    return Outcome(decision_id, float(reward), at, definition, version)


def timing(outcome: Outcome, decide_time: datetime, window_s: float) -> tuple[str, str] | None:
    """(reason, detail) when the reward's time rules it out; None when it may join."""
    if outcome.reward_time < decide_time:
        return BEFORE_DECISION, (
            f"reward_time {outcome.reward_time.isoformat()} is before the decision "
            f"({decide_time.isoformat()})"
        )
    closes = decide_time + timedelta(seconds=window_s)
    if outcome.reward_time > closes:
        return PAST_WINDOW, (
            f"reward_time {outcome.reward_time.isoformat()} is past the censoring window of "
            f"{outcome.definition}@{outcome.version} ({window_s:g} s, closed "
            f"{closes.isoformat()})"
        )
    return None
