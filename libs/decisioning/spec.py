"""``policy.json``: a policy version's actions and exploration, versioned and validated.

A policy is a model whose ONNX output holds one score per action (``scores.output``,
columns in ``actions`` order; higher is better, e.g. an expected reward) plus this
document, which says how scores become a distribution over the eligible actions and how
one action is drawn from it (``distribution.py``, ``draw.py``). It travels as the
registry artifact ``policy.json`` beside ``model.onnx``; readers refuse a format or
version they do not know, and unknown keys, rather than guess. Every check says what to
fix. ADR 0020 explains the choices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "lathe.policy"
FORMAT_VERSION = 1
BAND_REFERENCES = ("best", "margin")
"""Besides an action's name: the best eligible score, or best minus second best."""


class PolicySpecError(ValueError):
    """A policy document or argument that cannot be used as it is; the message says why."""


@dataclass(frozen=True)
class Action:
    """One choice the policy can make (e.g. a credit-line tier)."""

    name: str
    """Unique within the policy; what requests name in ``eligible_actions`` and logs record."""
    attributes: Mapping[str, float] = field(default_factory=dict)
    """Numbers that describe the action (line factor, APR); the learner feeds them to the
    reward model beside the context, so actions share what they learn. Same keys for every
    action of a policy."""


@dataclass(frozen=True)
class Band:
    """Explore only for rows whose reference score lies in ``[low, high]``; exploit elsewhere."""

    reference: str
    """``best`` (best eligible score), ``margin`` (best minus second-best eligible score;
    0 with one eligible action) or an action's name (that action's score)."""
    low: float
    """Inclusive lower end (may be ``-inf``)."""
    high: float
    """Inclusive upper end (may be ``inf``)."""


@dataclass(frozen=True)
class EpsilonGreedy:
    """The best eligible action with probability 1 - epsilon, else a uniform eligible one."""

    epsilon: float
    """Share of decisions drawn uniformly among the eligible actions, in [0, 1]; the best
    action gets 1 - epsilon + epsilon / k, each other eligible one epsilon / k."""
    band: Band | None = None
    """Where exploration applies; ``None``: every row."""


@dataclass(frozen=True)
class Softmax:
    """``p ∝ exp(score / temperature)`` over the eligible actions, mixed up to a floor."""

    temperature: float
    """In score units, > 0: small is nearly greedy, large nearly uniform."""
    floor: float = 0.0
    """Every eligible action gets at least this probability, in [0, 1 / len(actions)]:
    ``p = floor + (1 - k * floor) * softmax``, which keeps inverse-propensity weights
    of later evaluations at most 1 / floor."""
    band: Band | None = None
    """Where exploration applies; ``None``: every row."""


Exploration = EpsilonGreedy | Softmax


@dataclass(frozen=True)
class PolicySpec:
    """A policy version: its actions, where its scores are, and how it explores."""

    name: str
    """The policy's (model's) name, for messages and logs."""
    actions: tuple[Action, ...]
    """In the order of the score columns."""
    exploration: Exploration
    """How scores become probabilities; ``EpsilonGreedy(0)`` is greedy."""
    salt: str
    """Mixed into the draw's hash (``draw.unit_hash``): a new salt gives independent draws
    for the same decision ids. Change it with each policy version."""
    output: str = "scores"
    """The ONNX output holding one score per action, shape ``[batch, len(actions)]``."""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.actions)

    def index(self, name: str) -> int:
        """The column of action ``name``; a clear error for an unknown one."""
        try:
            return self.action_names.index(name)
        except ValueError:
            raise PolicySpecError(
                f"unknown action {name!r}; policy {self.name!r} has {list(self.action_names)}"
            ) from None

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys): equal specs give equal bytes, hence equal digests."""
        return json.dumps(_document(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PolicySpec:
        """Parse and validate ``policy.json``; ``PolicySpecError`` says what to fix."""
        try:
            document = json.loads(data)
        except json.JSONDecodeError as error:
            raise PolicySpecError(f"policy.json is not JSON: {error}") from None
        return _parse(document)

    @classmethod
    def from_tags(cls, name: str, tags: Mapping[str, str]) -> PolicySpec | None:
        """The first inference policy's tags (``policy.actions``, ``policy.epsilon``) as a spec.

        Same distribution and propensities as the first inference policy (since removed);
        the draw differs (one hash and the inverse CDF instead of two hashes).
        """
        actions = [a.strip() for a in tags.get("policy.actions", "").split(",") if a.strip()]
        if not actions:
            return None
        epsilon = _number(tags.get("policy.epsilon", "0") or "0", "policy.epsilon")
        return cls(name, tuple(Action(a) for a in actions), EpsilonGreedy(epsilon), salt=name)


def _validate(spec: PolicySpec) -> None:
    if not spec.name:
        raise PolicySpecError("policy name is empty; name the policy (the model's name)")
    if not spec.actions:
        raise PolicySpecError(f"policy {spec.name!r} has no actions; declare at least one")
    names = [a.name for a in spec.actions]
    if any(not n for n in names):
        raise PolicySpecError(f"policy {spec.name!r}: an action has an empty name")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PolicySpecError(f"policy {spec.name!r}: actions {duplicates} appear twice")
    keys = {tuple(sorted(a.attributes)) for a in spec.actions}
    if len(keys) > 1:
        raise PolicySpecError(
            f"policy {spec.name!r}: every action needs the same attribute keys, got {sorted(keys)}"
        )
    for action in spec.actions:
        for key, value in action.attributes.items():
            if not math.isfinite(value):
                raise PolicySpecError(f"action {action.name!r}: attribute {key!r} is {value}")
    if not spec.output:
        raise PolicySpecError("output is empty; name the ONNX output holding the scores")
    _validate_exploration(spec.exploration, spec)


def _validate_exploration(exploration: Exploration, spec: PolicySpec) -> None:
    if isinstance(exploration, EpsilonGreedy):
        if not 0.0 <= exploration.epsilon <= 1.0:
            raise PolicySpecError(
                f"exploration.epsilon must be within [0, 1] (the share of decisions drawn "
                f"uniformly among eligible actions), got {exploration.epsilon}"
            )
    elif isinstance(exploration, Softmax):
        if not (exploration.temperature > 0.0 and math.isfinite(exploration.temperature)):
            raise PolicySpecError(
                f"exploration.temperature must be a positive number in score units, got "
                f"{exploration.temperature}; for a greedy policy use epsilon_greedy with "
                f"epsilon 0"
            )
        most = 1.0 / len(spec.actions)
        if not 0.0 <= exploration.floor <= most:
            raise PolicySpecError(
                f"exploration.floor must be within [0, 1/{len(spec.actions)} = {most:.4g}] "
                f"(every eligible action gets at least the floor), got {exploration.floor}"
            )
    else:
        raise PolicySpecError(f"unknown exploration {exploration!r}")
    band = exploration.band
    if band is None:
        return
    if band.reference not in BAND_REFERENCES and band.reference not in spec.action_names:
        raise PolicySpecError(
            f"exploration.band.reference must be one of {list(BAND_REFERENCES)} or an action "
            f"name {list(spec.action_names)}, got {band.reference!r}"
        )
    if math.isnan(band.low) or math.isnan(band.high) or band.low > band.high:
        raise PolicySpecError(f"exploration.band needs low <= high, got [{band.low}, {band.high}]")


def _document(spec: PolicySpec) -> dict[str, Any]:
    exploration = spec.exploration
    if isinstance(exploration, EpsilonGreedy):
        explore: dict[str, Any] = {"kind": "epsilon_greedy", "epsilon": exploration.epsilon}
    else:
        explore = {
            "kind": "softmax",
            "temperature": exploration.temperature,
            "floor": exploration.floor,
        }
    if exploration.band is not None:
        band = exploration.band
        ends = {"low": band.low, "high": band.high}
        # An open end is left out (JSON has no infinity).
        explore["band"] = {
            "reference": band.reference,
            **{k: v for k, v in ends.items() if math.isfinite(v)},
        }
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": spec.name,
        "actions": [{"name": a.name, "attributes": dict(a.attributes)} for a in spec.actions],
        "exploration": explore,
        "salt": spec.salt,
        "output": spec.output,
    }


def _parse(document: Any) -> PolicySpec:
    _object(document, "policy.json")
    if document.get("format") != FORMAT:
        raise PolicySpecError(
            f"not a policy spec: format is {document.get('format')!r}, expected {FORMAT!r}"
        )
    if document.get("version") != FORMAT_VERSION:
        raise PolicySpecError(
            f"policy spec version {document.get('version')!r} is not supported by this code "
            f"(it reads version {FORMAT_VERSION}); upgrade the reader"
        )
    allowed = {"format", "version", "name", "actions", "exploration", "salt", "output"}
    _keys(document, "policy.json", allowed, required={"name", "actions", "exploration", "salt"})
    actions = document["actions"]
    if not isinstance(actions, list):
        raise PolicySpecError("actions must be a list of {name, attributes} objects")
    parsed = []
    for i, action in enumerate(actions):
        _object(action, f"actions[{i}]")
        _keys(action, f"actions[{i}]", {"name", "attributes"}, required={"name"})
        attributes = action.get("attributes", {})
        _object(attributes, f"actions[{i}].attributes")
        parsed.append(
            Action(
                _text(action["name"], f"actions[{i}].name"),
                {k: _number(v, f"actions[{i}].attributes.{k}") for k, v in attributes.items()},
            )
        )
    return PolicySpec(
        name=_text(document["name"], "name"),
        actions=tuple(parsed),
        exploration=_parse_exploration(document["exploration"]),
        salt=_text(document["salt"], "salt"),
        output=_text(document.get("output", "scores"), "output"),
    )


def _parse_exploration(document: Any) -> Exploration:
    _object(document, "exploration")
    kind = document.get("kind")
    band = None
    if document.get("band") is not None:
        raw = document["band"]
        _object(raw, "exploration.band")
        _keys(raw, "exploration.band", {"reference", "low", "high"}, required={"reference"})
        band = Band(
            _text(raw["reference"], "exploration.band.reference"),
            _number(raw.get("low", -math.inf), "exploration.band.low"),
            _number(raw.get("high", math.inf), "exploration.band.high"),
        )
    if kind == "epsilon_greedy":
        _keys(document, "exploration", {"kind", "epsilon", "band"}, required={"epsilon"})
        return EpsilonGreedy(_number(document["epsilon"], "exploration.epsilon"), band)
    if kind == "softmax":
        _keys(document, "exploration", {"kind", "temperature", "floor", "band"},
              required={"temperature"})  # fmt: skip
        return Softmax(
            _number(document["temperature"], "exploration.temperature"),
            _number(document.get("floor", 0.0), "exploration.floor"),
            band,
        )
    raise PolicySpecError(f"exploration.kind must be 'epsilon_greedy' or 'softmax', got {kind!r}")


def _object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise PolicySpecError(f"{where} must be a JSON object, got {type(value).__name__}")


def _keys(document: dict[str, Any], where: str, allowed: set[str], *, required: set[str]) -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise PolicySpecError(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(required - set(document))
    if missing:
        raise PolicySpecError(f"{where}: missing {missing}")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PolicySpecError(f"{where} must be a string, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise PolicySpecError(f"{where} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PolicySpecError(f"{where} must be a number, got {value!r}") from None
