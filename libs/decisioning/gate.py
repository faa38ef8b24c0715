"""The promotion rule for a policy, from its registered OPE metrics alone.

A candidate is evaluated on logs the production policy decided, so the production
policy's value on the same rows is ``ope.logging.value`` and the candidate's gain over it
is ``ope.dr_gain`` (DR minus logging, with the *paired* interval: both are computed from
the same decisions, so their noise largely cancels). The candidate passes when its
estimated gain is at least ``margin`` and the gain's lower bound is above 0 — "estimated
value ≥ production's + margin, and the interval excludes doing worse".

Before the numbers, where they came from: a candidate whose evaluation left out decisions
still awaiting their reward (``opl.excluded_pending`` > 0, the trainer's count) fails,
whatever its estimates. Rewards that arrive early are not a random share of them (in
lending, declines and defaults are known early, repayments at term), so such estimates
are biased in either direction; the trainer's default window ends where every reward
has settled (``services/trainer/policies/window.py``), and only an explicit later end
leaves decisions pending. Versions without the metric (not evaluated by the trainer)
are judged on their estimates alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PENDING_METRIC = "opl.excluded_pending"
"""Decisions of the evaluation window left out because their reward had not arrived yet."""


@dataclass(frozen=True)
class GateVerdict:
    """Whether a candidate policy may be promoted, and why."""

    passed: bool
    """True: the rule holds."""
    reason: str
    """The numbers behind the verdict, for the registry's answer and logs."""


def promotion_gate(
    metrics: Mapping[str, float], *, margin: float = 0.0, prefix: str = "ope"
) -> GateVerdict:
    """Apply the rule to a version's metrics (``Report.metrics()`` / ``LearnedPolicy.metrics``)."""
    needed = [f"{prefix}.dr_gain.value", f"{prefix}.dr_gain.lower", f"{prefix}.logging.value"]
    missing = [name for name in needed if name not in metrics]
    if missing:
        return GateVerdict(
            False, f"no OPE metrics {missing}: evaluate the policy on production's logs first"
        )
    pending = metrics.get(PENDING_METRIC, 0.0)
    if not pending <= 0.0:
        return GateVerdict(
            False,
            f"its evaluation left out {pending:.0f} decisions still awaiting their reward "
            f"({PENDING_METRIC}): the rewards reported early are not a fair sample, so the "
            "estimates are biased. Learn it again (lathe policies learn) on a window whose "
            "rewards have settled: leave the window's end open (it then ends a censoring "
            "window before now) or move it earlier, or wait until those rewards have arrived "
            "or been censored",
        )
    gain, lower = metrics[needed[0]], metrics[needed[1]]
    production = metrics[needed[2]]
    value = metrics.get(f"{prefix}.dr.value", production + gain)
    numbers = (
        f"DR value {value:.6g} vs production {production:.6g}: gain {gain:.6g}, "
        f"lower bound {lower:.6g}, margin {margin:.6g}"
    )
    if gain < margin:
        return GateVerdict(False, f"estimated gain below the margin ({numbers})")
    if not lower > 0.0:
        return GateVerdict(False, f"the gain's interval includes doing worse ({numbers})")
    return GateVerdict(True, numbers)
