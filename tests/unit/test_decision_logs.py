"""The trainer's reading of logged decisions, outcome parsing, and the CLI's log windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as im
from lathe.inference.v1 import request_response_pb2 as irr
from libs.preprocessing import fit
from libs.sdk.policies import LogWindow
from services.inference.domain import rewards
from services.trainer.policies.decisions import DecisionLogError, assemble, newest

ACTIONS = ("a", "b")


def _logged(
    i: int, p: list[float], action: str, propensity: float, status: int
) -> irr.LoggedDecision:
    decision = ev.PredictionLogged(
        decision_id=f"d{i}",
        model_version=1,
        sample_rate=0.5,
        feature_names=["x", "g"],
        feature_values=[
            fs.Value(float64_value=float(i)),
            fs.Value(string_value="u" if i % 2 else "v"),
        ],
        action_names=list(ACTIONS),
        action_probabilities=p,
        chosen_action=action,
        propensity=propensity,
    )
    decision.predict_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i))
    return irr.LoggedDecision(decision=decision, reward_status=status, reward=float(i))


def test_assemble_counts_what_it_leaves_out_and_never_guesses() -> None:
    prep = fit({"x": [0.0, 1.0, 2.0], "g": ["u", "v", "u"]}, ["x", "g"], categorical=["g"])
    joined = im.REWARD_STATUS_JOINED
    rows = [
        _logged(0, [0.8, 0.2], "a", 0.8, joined),
        _logged(1, [0.8, 0.2], "b", 0.2, joined),
        _logged(2, [0.8, 0.3], "a", 0.8, joined),  # sums to 1.1
        _logged(3, [0.8, 0.2], "a", 0.5, joined),  # propensity disagrees
        _logged(4, [0.8, 0.2], "a", 0.8, im.REWARD_STATUS_PENDING),
        _logged(5, [0.8, 0.2], "a", 0.8, im.REWARD_STATUS_CENSORED),
        _logged(6, [0.5, 0.5], "b", 0.5, joined),
    ]
    out = assemble(rows, prep, ACTIONS)
    assert out.logs.rows == 3
    assert (out.excluded.pending, out.excluded.censored, out.excluded.bad_distribution) == (1, 1, 2)
    assert "sum to" in out.excluded.examples[0] and "propensity" in out.excluded.examples[1]
    assert out.logs.actions.tolist() == [0, 1, 1]
    assert out.logs.rewards.tolist() == [0.0, 1.0, 6.0]
    np.testing.assert_array_equal(out.logs.sample_weights, [2.0, 2.0, 2.0])
    assert out.versions == (1,)
    assert newest(out.decide_times, 0.34).tolist() == [False, False, True]
    with pytest.raises(DecisionLogError, match="chose among"):
        assemble(rows[:1], prep, ("a", "c"))
    with pytest.raises(DecisionLogError, match="no usable decisions"):
        assemble(rows[4:6], prep, ACTIONS)


def test_outcomes_parse_strictly_and_time_against_the_window() -> None:
    good = (
        b'{"decision_id": "d", "reward": 1.5, "reward_time": "2026-01-01T00:10:00Z", '
        b'"reward_definition": "m", "reward_definition_version": 1}'
    )
    outcome = rewards.parse_outcome(good)
    assert outcome.reward == 1.5 and outcome.version == 1
    decided = datetime(2026, 1, 1, tzinfo=UTC)
    assert rewards.timing(outcome, decided, 3600) is None
    assert rewards.timing(outcome, decided, 60)[0] == rewards.PAST_WINDOW  # type: ignore[index]
    assert rewards.timing(outcome, decided + timedelta(hours=1), 60)[0] == rewards.BEFORE_DECISION  # type: ignore[index]
    for bad, words in [
        (b"[]", "object"),
        (b'{"decision_id": "d"}', "missing"),
        (good.replace(b"1.5", b"NaN"), "finite"),
        (
            good.replace(b'"reward_definition_version": 1', b'"reward_definition_version": 0'),
            r"in \[1, 2147483647\]",
        ),
        (good.replace(b"00:10:00Z", b"00:10:00"), "UTC offset"),
    ]:
        with pytest.raises(rewards.MalformedOutcome, match=words):
            rewards.parse_outcome(bad)


def test_log_windows_parse_durations_and_ranges() -> None:
    now = datetime(2026, 3, 8, tzinfo=UTC)
    window = LogWindow.parse("7d", "margin@2", now=now)
    assert window.start == now - timedelta(days=7) and window.end is None
    assert window.reward_definition == "margin" and window.reward_definition_version == 2
    ranged = LogWindow.parse("2026-03-01..", "m@1")
    assert ranged.start == datetime(2026, 3, 1, tzinfo=UTC) and ranged.end is None
    with pytest.raises(ValueError, match="<definition>@<version>"):
        LogWindow.parse("7d", "margin")
    with pytest.raises(ValueError, match="duration"):
        LogWindow.parse("last week", "m@1")


def test_a_served_policy_refuses_rows_that_are_not_distributions() -> None:
    from libs.decisioning.spec import Action, EpsilonGreedy, PolicySpec
    from services.inference.domain.policies import PolicyRefused, decide, locate

    spec = PolicySpec("p", (Action("a"), Action("b")), EpsilonGreedy(0.2), salt="s")
    served = locate(spec, ("probability", "scores"), (1, 2), "p v1")
    assert served.start == 1
    made = decide(served, [[0.9, 0.1, 0.3]], [()], ["d1"])
    assert made.probabilities == [[0.1, 0.9]] and made.scores == [[0.1, 0.3]]
    assert made.propensities[0] == made.probabilities[0][ACTIONS.index(made.actions[0])]
    with pytest.raises(PolicyRefused, match="non-finite score"):
        decide(served, [[0.0, float("nan"), 1.0]], [()], ["d2"])
    with pytest.raises(PolicyRefused, match="unknown action"):
        decide(served, [[0.0, 0.1, 1.0]], [("c",)], ["d3"])
    with pytest.raises(ValueError, match="one score per action"):
        locate(spec, ("scores",), (3,), "p v2")
