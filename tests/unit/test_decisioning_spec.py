"""policy.json: round trips, and every bad spec refused with a message that says what to fix."""

from __future__ import annotations

import json
import math

import pytest

from libs.decisioning.spec import (
    Action,
    Band,
    EpsilonGreedy,
    PolicySpec,
    PolicySpecError,
    Softmax,
)

TIERS = (
    Action("decline", {"line": 0.0}),
    Action("small", {"line": 0.5}),
    Action("large", {"line": 1.5}),
)


def _spec(exploration: EpsilonGreedy | Softmax, **kwargs: object) -> PolicySpec:
    return PolicySpec("credit-line", TIERS, exploration, "v1", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exploration",
    [
        EpsilonGreedy(0.1),
        EpsilonGreedy(0.0, Band("margin", 0.0, 0.05)),
        Softmax(0.2, 0.05),
        Softmax(0.2, 0.0, Band("small", -math.inf, 0.3)),
        Softmax(1.0, 1 / 3, Band("best", 0.1, math.inf)),
    ],
)
def test_policy_json_round_trips_byte_for_byte(exploration: EpsilonGreedy | Softmax) -> None:
    spec = _spec(exploration)
    data = spec.to_json()
    assert PolicySpec.from_json(data) == spec
    assert PolicySpec.from_json(data).to_json() == data
    json.loads(data)  # strict JSON: open band ends are left out, never Infinity


@pytest.mark.parametrize(
    ("exploration", "message"),
    [
        (EpsilonGreedy(1.5), "epsilon must be within [0, 1]"),
        (EpsilonGreedy(-0.1), "epsilon must be within [0, 1]"),
        (Softmax(0.0), "temperature must be a positive number"),
        (Softmax(math.nan), "temperature must be a positive number"),
        (Softmax(1.0, 0.5), "floor must be within [0, 1/3"),
        (Softmax(1.0, -0.01), "floor must be within [0, 1/3"),
        (EpsilonGreedy(0.1, Band("medium", 0, 1)), "band.reference must be one of"),
        (EpsilonGreedy(0.1, Band("best", 1, 0)), "band needs low <= high"),
    ],
)
def test_bad_exploration_is_refused_with_what_to_fix(
    exploration: EpsilonGreedy | Softmax, message: str
) -> None:
    with pytest.raises(PolicySpecError, match=message.replace("[", r"\[")):
        _spec(exploration)


def test_bad_actions_are_refused() -> None:
    with pytest.raises(PolicySpecError, match="no actions"):
        PolicySpec("p", (), EpsilonGreedy(0.1), "s")
    with pytest.raises(PolicySpecError, match=r"actions \['a'\] appear twice"):
        PolicySpec("p", (Action("a"), Action("a")), EpsilonGreedy(0.1), "s")
    with pytest.raises(PolicySpecError, match="same attribute keys"):
        PolicySpec("p", (Action("a", {"x": 1.0}), Action("b")), EpsilonGreedy(0.1), "s")
    spec = _spec(EpsilonGreedy(0.1))
    with pytest.raises(PolicySpecError, match=r"unknown action 'medium'.*'decline', 'small'"):
        spec.index("medium")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "lathe.preprocessing"}, "not a policy spec"),
        ({"version": 2}, "version 2 is not supported"),
        ({"colour": "red"}, r"unknown keys \['colour'\]"),
        ({"exploration": {"kind": "thompson"}}, "kind must be 'epsilon_greedy' or 'softmax'"),
        ({"exploration": {"kind": "softmax", "temp": 1}}, r"unknown keys \['temp'\]"),
        ({"exploration": {"kind": "epsilon_greedy", "epsilon": "lots"}}, "must be a number"),
        ({"actions": "decline,small"}, "actions must be a list"),
        ({"actions": [{"name": "a", "attributes": {"x": "high"}}]}, "must be a number"),
    ],
)
def test_bad_documents_are_refused(change: dict[str, object], message: str) -> None:
    document = json.loads(_spec(EpsilonGreedy(0.1)).to_json())
    document.update(change)
    with pytest.raises(PolicySpecError, match=message):
        PolicySpec.from_json(json.dumps(document))
    with pytest.raises(PolicySpecError, match="not JSON"):
        PolicySpec.from_json("{")
    del document["salt"]
    with pytest.raises(PolicySpecError):
        PolicySpec.from_json(json.dumps(document))


def test_the_first_inference_policys_tags_become_a_spec() -> None:
    spec = PolicySpec.from_tags("offers", {"policy.actions": "a, b,c", "policy.epsilon": "0.2"})
    assert spec is not None
    assert spec.action_names == ("a", "b", "c")
    assert spec.exploration == EpsilonGreedy(0.2)
    assert PolicySpec.from_tags("offers", {}) is None
    with pytest.raises(PolicySpecError, match="epsilon must be within"):
        PolicySpec.from_tags("offers", {"policy.actions": "a", "policy.epsilon": "2"})
