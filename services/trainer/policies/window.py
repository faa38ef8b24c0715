"""Which logged decisions a policy job reads: by default, only those whose rewards settled — pure.

A decision's reward may arrive at any time within its definition's censoring window, and
*when* it arrives depends on the action and the outcome: in lending a decline or a
default is reported early, a repayment at term. A window that ends less than a censoring
window ago therefore holds decisions still ``PENDING``; leaving them out keeps the early
outcomes only, and every estimate is biased — either way: simulated with the real
``evaluate`` (90-day window, 30 days in), a true gain of +0.10 came out -0.56.

So a window left open at its end ends at ``now - censoring window - SETTLE_S``: every
decision before that is ``JOINED`` or ``CENSORED`` for good, and the evaluation is the
one the window will always give. An explicit end later than that is taken as given (to
look early at the rewards arrived so far): its pending decisions are left out and
counted (``opl.excluded_pending``), and the registry's policy-value gate refuses to
promote a version whose estimates left any out (``libs.decisioning.gate``). A window
that has no pending decision is unaffected whatever its end: each row's status is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

SETTLE_S = 900.0
"""How long past a decision's censoring window the trainer waits before a default window
takes it. Inference reports a decision without a reward ``CENSORED`` only
``JOIN_GRACE_S + CENSOR_MARGIN_S`` (11 minutes) after its window closed
(``services.inference.domain.rewards``: an outcome that arrived in time may still join
then); 15 minutes also cover the trainer's clock running a few minutes ahead of
Postgres's, which ListDecisions reads statuses with."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class UnsettledWindow(ValueError):
    """A default window that holds no decision whose reward settled; the message says
    what to choose instead."""


@dataclass(frozen=True)
class Bounds:
    """The decide times a job lists, ``[start, end)``."""

    start: datetime | None
    """The window's start as asked (None: the first decision)."""
    end: datetime
    """Its end: as asked, or ``settled`` when left open."""
    settled: datetime
    """Every decision made before this has its final reward status (joined or censored)."""
    explicit_end: bool
    """True: the caller chose ``end`` (after ``settled``, some decisions may be pending)."""


def settled_before(now: datetime, censoring_window_s: float) -> datetime:
    """The decide time before which every reward has settled, on a whole minute (a
    LearnPolicy retried within it reads the same decisions and asks the registry for the
    same version); the epoch at the earliest."""
    back = max(censoring_window_s, 0.0) + SETTLE_S
    if back >= (now - EPOCH).total_seconds():
        return EPOCH
    return (now - timedelta(seconds=back)).replace(second=0, microsecond=0)


def bounds(
    start: datetime | None,
    end: datetime | None,
    *,
    now: datetime,
    censoring_window_s: float,
    reward: str,
) -> Bounds:
    """The window to list: ``end`` as asked, or where rewards settled when left open.

    ``reward`` (``name@version``) is for the message. ``UnsettledWindow`` when the window
    was left open and starts at or after where rewards settled (it would hold nothing)."""
    settled = settled_before(now, censoring_window_s)
    if end is not None:
        return Bounds(start, end, settled, explicit_end=True)
    if start is not None and start >= settled:
        raise UnsettledWindow(unsettled_message(start, settled, censoring_window_s, reward))
    return Bounds(start, settled, settled, explicit_end=False)


def unsettled_message(
    start: datetime | None, settled: datetime, censoring_window_s: float, reward: str
) -> str:
    """Why a default window holds no decision, and what to choose instead."""
    since = f"since {_iso(start)} " if start is not None else ""
    days = censoring_window_s / 86400
    return (
        f"no decision {since}has its reward settled: {reward}'s rewards may come up to "
        f"{_span(censoring_window_s)} after a decision, so the window ends at {_iso(settled)} "
        "by default (decisions after that may still get theirs, and leaving them out keeps "
        "only the outcomes reported early, a biased estimate). Choose a window that starts "
        f"earlier (e.g. --logs {max(1, round(days)) + 30}d: the 30 days that ended then), or "
        "wait; or give an explicit end to look at the rewards arrived so far (the decisions "
        "still pending are left out and counted, and the registry's policy-value gate "
        "refuses to promote a version evaluated on them)"
    )


def _span(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds:g} s"


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
