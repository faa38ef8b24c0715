"""The policy jobs' log window (default end where every reward settled) and the
policy-value gate's refusal of estimates that left pending decisions out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from libs.decisioning.evaluate import evaluate
from libs.decisioning.gate import PENDING_METRIC, promotion_gate
from libs.decisioning.logs import LoggedDecisions
from services.inference.domain import rewards
from services.trainer.policies.window import (
    EPOCH,
    SETTLE_S,
    UnsettledWindow,
    bounds,
    settled_before,
)

NOW = datetime(2026, 6, 1, 12, 34, 56, 789000, tzinfo=UTC)
DAY = 86400.0
NINETY_DAYS = 90 * DAY


def test_an_open_window_ends_where_every_reward_has_settled() -> None:
    settled = datetime(2026, 3, 3, 12, 19, tzinfo=UTC)  # 90 days and 15 minutes back, floored
    assert settled_before(NOW, NINETY_DAYS) == settled
    span = bounds(
        NOW - timedelta(days=120), None, now=NOW, censoring_window_s=NINETY_DAYS, reward="m@1"
    )
    assert (span.end, span.settled, span.explicit_end) == (settled, settled, False)
    # A window already past is read as asked.
    past = bounds(
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
        now=NOW,
        censoring_window_s=NINETY_DAYS,
        reward="m@1",
    )
    assert past.end == datetime(2026, 2, 1, tzinfo=UTC) and past.end < past.settled
    # An explicit end inside the pending period is taken as given (the job counts the
    # decisions still pending, and the gate refuses a version that left any out).
    early = bounds(None, NOW, now=NOW, censoring_window_s=NINETY_DAYS, reward="m@1")
    assert early.end == NOW and early.explicit_end and early.end > early.settled
    # Inference reports a decision censored 11 minutes after its window closed.
    assert SETTLE_S > rewards.JOIN_GRACE_S + rewards.CENSOR_MARGIN_S
    assert settled_before(NOW, 1e12) == EPOCH


def test_an_open_window_that_starts_after_rewards_settled_is_refused_with_what_to_do() -> None:
    with pytest.raises(UnsettledWindow) as refused:
        bounds(
            NOW - timedelta(days=30),
            None,
            now=NOW,
            censoring_window_s=NINETY_DAYS,
            reward="repaid_margin@1",
        )
    message = str(refused.value)
    assert "repaid_margin@1" in message and "90 days" in message
    assert "2026-03-03T12:19:00Z" in message and "--logs 120d" in message
    assert "explicit end" in message


def test_the_default_window_evaluates_without_the_bias_of_early_outcomes() -> None:
    """Lending: a decline or a default is reported a day after the decision, a repayment
    at its 90-day term. 120 days of decisions read now: the open window keeps the early
    outcomes only (the old behaviour), the default window only decisions all settled."""
    rng = np.random.default_rng(0)
    n = 40_000
    decided = NOW - timedelta(days=120) + rng.random(n) * timedelta(days=120)
    approve = rng.random(n) < 0.5
    default = rng.random(n) < 0.2
    reward = np.where(~approve, 0.0, np.where(default, -3.0, 1.0))  # approving gains 0.1
    delay = np.where(approve & ~default, timedelta(days=90), timedelta(days=1))
    joined = decided + delay <= NOW
    span = bounds(
        NOW - timedelta(days=120), None, now=NOW, censoring_window_s=NINETY_DAYS + DAY, reward="r@1"
    )
    inside = decided < span.end
    assert joined[inside].all()  # every decision of the default window has its reward

    def gain(rows: np.ndarray) -> float:
        m = int(rows.sum())
        logs = LoggedDecisions(
            rng.normal(size=(m, 2)),
            np.zeros((m, 0), dtype=np.int64),
            approve[rows].astype(np.int64),
            np.full(m, 0.5),
            reward[rows],
            np.ones((m, 2), dtype=bool),
            ("decline", "approve"),
            sample_weights=np.ones(m),
            logging_probabilities=np.full((m, 2), 0.5),
        )
        return evaluate(logs, np.tile([0.0, 1.0], (m, 1))).dr_gain.value

    assert abs(gain(inside) - 0.1) < 0.1
    assert gain(joined) < -0.2  # the open window's joined rows: approving looks ruinous


def _metrics(**extra: float) -> dict[str, float]:
    return {
        "ope.dr.value": 0.12,
        "ope.logging.value": 0.02,
        "ope.dr_gain.value": 0.10,
        "ope.dr_gain.lower": 0.05,
        **extra,
    }


def test_the_gate_refuses_estimates_that_left_pending_decisions_out() -> None:
    assert promotion_gate(_metrics(), margin=0.01).passed  # not evaluated by the trainer
    assert promotion_gate(_metrics(**{PENDING_METRIC: 0.0}), margin=0.01).passed
    for pending in (1.0, 250.0, float("nan")):
        verdict = promotion_gate(_metrics(**{PENDING_METRIC: pending}), margin=0.01)
        assert not verdict.passed
        assert "awaiting their reward" in verdict.reason and "settled" in verdict.reason
    # Estimates that fail anyway still say what is wrong with their data first.
    worse = _metrics(**{PENDING_METRIC: 3.0, "ope.dr_gain.value": -0.1})
    assert "awaiting their reward" in promotion_gate(worse).reason
