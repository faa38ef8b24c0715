"""ListDecisions: a policy's logged decisions with their reward of one definition, paged.

Each row's reward status is read with Postgres's clock — the one the reward join checks
lateness with (``domain.rewards``): ``JOINED`` (a reward), ``PENDING`` (none yet, and one
may still join), ``CENSORED`` (none, and none ever will: the window closed, plus
``JOIN_GRACE_S`` for an outcome that arrived in time to be handled and
``CENSOR_MARGIN_S`` for its transaction to commit). A decision reported censored is
never joined later.

Pages follow the order decisions were written (``store.decisions``), not decide time:
a decision is written at the logger's flush, after later decisions may have been listed,
and a cursor on decide time would skip it. A full page gives its last row's position,
where the next one starts (the servicer's page token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from services.inference.domain import rewards as rules
from services.inference.store import decisions

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DecisionQuery:
    """One page of ListDecisions, checked."""

    model_name: str
    """The policy whose decisions to list."""
    definition: str
    """The reward definition joined to each decision."""
    version: int
    """The definition's version."""
    start: datetime
    """Decisions made at or after this time."""
    end: datetime | None
    """Decisions made before this time; None: every decision written so far."""
    after: tuple[int, str] | None
    """The last row of the previous page (its writing transaction, decision id); None:
    the first page."""
    size: int
    """At most this many rows."""


class DecisionLog:
    """Reads pages of logged decisions with their reward status."""

    def __init__(self, pool: asyncpg.Pool, window_s: Callable[[str, int], float]) -> None:
        self._pool = pool
        self._window_s = window_s

    async def page(
        self, query: DecisionQuery
    ) -> tuple[rr.ListDecisionsResponse, tuple[int, str] | None]:
        """The page, and where the next one starts (None: this one is the last)."""
        window = self._window_s(query.definition, query.version)
        rows = await decisions.page(
            self._pool,
            query.model_name,
            query.definition,
            query.version,
            query.start,
            query.end or decisions.NO_END,
            decisions.Position(*query.after) if query.after is not None else None,
            query.size,
        )
        response = rr.ListDecisionsResponse(censoring_window_s=window)
        for row in rows:
            logged = response.decisions.add()
            logged.decision.ParseFromString(row.payload)
            if row.reward is not None and row.reward_time is not None:
                logged.reward_status = m.REWARD_STATUS_JOINED
                logged.reward = row.reward
                logged.reward_time.FromDatetime(row.reward_time)
            elif rules.censored(row.decide_time, window, row.read_at):
                logged.reward_status = m.REWARD_STATUS_CENSORED
            else:
                logged.reward_status = m.REWARD_STATUS_PENDING
        if len(rows) < query.size:
            return response, None
        last = rows[-1].position
        return response, (last.written_xid, last.decision_id)
