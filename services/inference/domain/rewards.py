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
- ``arrived_late``: reward_time inside the window, but the outcome reached JetStream
  after the window closed, or the consumer handled it more than ``JOIN_GRACE_S`` after
  (a decision ListDecisions has reported ``CENSORED`` must stay censored);
- ``duplicate``: the decision already has a reward of this definition (the first stands).

``parse_outcome`` turns any bytes into an ``Outcome`` whose every value fits where it is
written — Postgres ``text``/``integer``/``double precision``/``timestamptz`` columns,
the int32 and ``Timestamp`` fields of ``RewardJoined``/``RewardRefused``, the stream id
and NATS headers of their events — or raises ``MalformedOutcome`` saying what is wrong;
never anything else, so every outcome is joined or refused once, never redelivered.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MALFORMED = "malformed"
UNKNOWN_DECISION = "unknown_decision"
BEFORE_DECISION = "before_decision"
PAST_WINDOW = "past_window"
ARRIVED_LATE = "arrived_late"
DUPLICATE = "duplicate"
REASONS = (MALFORMED, UNKNOWN_DECISION, BEFORE_DECISION, PAST_WINDOW, ARRIVED_LATE, DUPLICATE)
_FIELDS = {
    "decision_id",
    "reward",
    "reward_time",
    "reward_definition",
    "reward_definition_version",
}

MAX_DECISION_ID_BYTES = 1024
"""A decision id's UTF-8 length: it is a primary key and part of the reward's stream id
(Postgres b-tree entries hold at most ~2,700 bytes)."""
MAX_DEFINITION_BYTES = 256
"""A reward definition's UTF-8 length (a key column and part of the stream id)."""
MAX_DEFINITION_VERSION = 2**31 - 1
"""Versions are int32 in the events and ``integer`` in Postgres."""
JOIN_GRACE_S = 600.0
"""An outcome that reached JetStream by its window's close still joins when the consumer
handles it within this long after the close (its lag, a redelivery after a failure, a
short Postgres outage). Longer, and ListDecisions would wait longer before it may report
a decision censored; shorter, and a routine consumer lag would refuse in-time outcomes."""
CENSOR_MARGIN_S = 60.0
"""ListDecisions reports ``CENSORED`` this long after the last moment a join may be
checked (close + ``JOIN_GRACE_S``): time for that join's transaction to commit."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN_CHARS = 60


class MalformedOutcome(ValueError):
    """Not an outcome; the message says which field and how."""


@dataclass(frozen=True)
class Outcome:
    """A parsed outcome; every value within the bounds of where it is stored."""

    decision_id: str
    """The decision it rewards: 1 to ``MAX_DECISION_ID_BYTES`` bytes, no control characters."""
    reward: float
    """Finite."""
    reward_time: datetime
    """When the outcome happened, in UTC (years 1 to 9999)."""
    definition: str
    """The reward definition's name: 1 to ``MAX_DEFINITION_BYTES`` bytes, no control characters."""
    version: int
    """The definition's version, 1 to ``MAX_DEFINITION_VERSION``."""


def parse_outcome(data: bytes) -> Outcome:
    """The outcome in ``data``; MalformedOutcome (only) for anything else."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSON, encoding, an over-long integer
        raise MalformedOutcome(f"not JSON: {_cut(str(exc))}") from None
    if not isinstance(document, dict):
        raise MalformedOutcome("not a JSON object")
    missing = sorted(_FIELDS - set(document))
    if missing:
        raise MalformedOutcome(f"missing {missing}; an outcome has {sorted(_FIELDS)}")
    decision_id = _text(document["decision_id"], "decision_id", MAX_DECISION_ID_BYTES)
    definition = _text(document["reward_definition"], "reward_definition", MAX_DEFINITION_BYTES)
    version = document["reward_definition_version"]
    if type(version) is not int or not 1 <= version <= MAX_DEFINITION_VERSION:
        raise MalformedOutcome(
            f"reward_definition_version must be an integer in [1, {MAX_DEFINITION_VERSION}], "
            f"got {_shown(version)}"
        )
    reward, reward_time = _reward(document["reward"]), _time(document["reward_time"])
    return Outcome(decision_id, reward, reward_time, definition, version)


def text_problem(value: object, max_bytes: int) -> str | None:
    """What keeps ``value`` from being a name or id of at most ``max_bytes``, or None."""
    if not isinstance(value, str):
        return f"must be a string, got {_shown(value)}"
    if not value:
        return "must not be empty"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (it holds a lone surrogate escape such as \\ud800)"
    if size > max_bytes:
        return f"is {size} bytes long (UTF-8); at most {max_bytes}"
    control = _CONTROL.search(value)
    if control is not None:
        return (
            f"contains the control character U+{ord(control.group()):04X} at "
            f"{control.start()}: it cannot be stored or sent in a header; remove it"
        )
    return None


def timing(outcome: Outcome, decide_time: datetime, window_s: float) -> tuple[str, str] | None:
    """(reason, detail) when the reward's time rules it out; None when it may join."""
    if outcome.reward_time < decide_time:
        return BEFORE_DECISION, (
            f"reward_time {outcome.reward_time.isoformat()} is before the decision "
            f"({decide_time.isoformat()})"
        )
    if (outcome.reward_time - decide_time).total_seconds() > window_s:
        return PAST_WINDOW, (
            f"reward_time {outcome.reward_time.isoformat()} is past the censoring window of "
            f"{outcome.definition}@{outcome.version} ({window_s:g} s, closed "
            f"{_after(decide_time, window_s)})"
        )
    return None


def lateness(
    outcome: Outcome, decide_time: datetime, window_s: float, arrived: datetime, handled: datetime
) -> tuple[str, str] | None:
    """(``arrived_late``, detail) when the outcome came after its window closed, else None.

    ``arrived``: when JetStream stored the message; ``handled``: Postgres's clock in the
    transaction that would join it — the clock ListDecisions reads statuses with.
    """
    since = (arrived - decide_time).total_seconds()
    handled_since = (handled - decide_time).total_seconds()
    if since <= window_s and handled_since <= window_s + JOIN_GRACE_S:
        return None
    when = (
        f"reached JetStream at {arrived.isoformat()}"
        if since > window_s
        else f"was handled at {handled.isoformat()}, more than {JOIN_GRACE_S:g} s"
    )
    return ARRIVED_LATE, (
        f"the outcome {when} after the censoring window of {outcome.definition}@"
        f"{outcome.version} closed ({window_s:g} s after the decision, at "
        f"{_after(decide_time, window_s)}): the decision is censored for it; publish "
        "outcomes within the window"
    )


def censored(decide_time: datetime, window_s: float, now: datetime) -> bool:
    """Whether a decision without a reward is past any join (``now``: Postgres's clock)."""
    return (now - decide_time).total_seconds() > window_s + JOIN_GRACE_S + CENSOR_MARGIN_S


def _text(value: object, field: str, max_bytes: int) -> str:
    problem = text_problem(value, max_bytes)
    if problem is not None:
        raise MalformedOutcome(f"{field} {problem}")
    return value  # type: ignore[return-value]


def _reward(value: object) -> float:
    if type(value) not in (int, float):
        raise MalformedOutcome(f"reward must be a finite number, got {_shown(value)}")
    try:
        reward = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer literal past the largest double
        reward = math.inf
    if not math.isfinite(reward):
        raise MalformedOutcome(f"reward must be a finite number (a double), got {_shown(value)}")
    return reward


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise MalformedOutcome(f"reward_time must be an RFC 3339 string, got {_shown(value)}")
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedOutcome(
            f"reward_time must be an RFC 3339 time, got {_shown(value)}"
        ) from None
    if at.tzinfo is None:
        raise MalformedOutcome(f"reward_time needs a UTC offset (e.g. 'Z'), got {_shown(value)}")
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise MalformedOutcome(
            f"reward_time {_shown(value)} is outside the years 0001-9999 in UTC"
        ) from None


def _after(start: datetime, seconds: float) -> str:
    try:
        return (start + timedelta(seconds=seconds)).isoformat()
    except OverflowError:
        return "after the year 9999"


def _shown(value: object) -> str:
    """A short, safe description of a JSON value for a refusal's detail."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."
