"""ListDecisions: a policy's logged decisions with their reward of one definition, paged.

Each row's reward status is read with Postgres's clock — the one the reward join checks
lateness with (``domain.rewards``): ``JOINED`` (a reward), ``PENDING`` (none yet, and one
may still join), ``CENSORED`` (none, and none ever will: the window closed, plus
``JOIN_GRACE_S`` for an outcome that arrived in time to be handled and
``CENSOR_MARGIN_S`` for its transaction to commit). A decision reported censored is
never joined later.

Pages are ordered by (decide time, decision id) and end ``LISTING_HORIZON_S`` before
Postgres's clock (``store.decisions``: past the logger's flush delay, so no decision is
written behind a page's cursor); a full page gives its last row's pair, where the next one
starts (the servicer's page token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from services.inference.domain import rewards as rules
from services.inference.store import decisions

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_END = datetime.max.replace(tzinfo=UTC)
"""An open-ended listing's end (the store's horizon before now still applies)."""


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
    """Decisions made before this time; None: up to the listing horizon before now."""
    after: tuple[datetime, str]
    """The last row of the previous page (``EPOCH, ""``: from the start)."""
    size: int
    """At most this many rows."""


class DecisionLog:
    """Reads pages of logged decisions with their reward status."""

    def __init__(self, pool: asyncpg.Pool, window_s: Callable[[str, int], float]) -> None:
        self._pool = pool
        self._window_s = window_s

    async def page(self, query: DecisionQuery) -> rr.ListDecisionsResponse:
        window = self._window_s(query.definition, query.version)
        rows = await decisions.page(
            self._pool,
            query.model_name,
            query.definition,
            query.version,
            query.start,
            query.end or NO_END,
            query.after,
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
        if len(rows) == query.size:
            last = rows[-1]
            micros = (last.decide_time - EPOCH) // timedelta(microseconds=1)
            response.next_page_token = f"{micros}:{last.decision_id}"
        return response
