"""ListDecisions: a policy's logged decisions with their reward of one definition, paged.

Each row's reward status is read against the definition's censoring window now:
``JOINED`` (a reward), ``PENDING`` (none yet, window open), ``CENSORED`` (window closed
without one). Pages are ordered by (decide time, decision id); the next page starts after
the last row's pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from services.inference.store import decisions

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class DecisionQuery:
    model_name: str
    definition: str
    version: int
    start: datetime
    end: datetime | None
    """None: now."""
    after: tuple[datetime, str]
    """The last row of the previous page (``EPOCH, ""``: from the start)."""
    size: int


class DecisionLog:
    def __init__(self, pool: asyncpg.Pool, window_s: Callable[[str, int], float]) -> None:
        self._pool = pool
        self._window_s = window_s

    async def page(self, query: DecisionQuery) -> rr.ListDecisionsResponse:
        now = datetime.now(UTC)
        window = self._window_s(query.definition, query.version)
        rows = await decisions.page(
            self._pool,
            query.model_name,
            query.definition,
            query.version,
            query.start,
            query.end or now,
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
            elif (now - row.decide_time).total_seconds() > window:
                logged.reward_status = m.REWARD_STATUS_CENSORED
            else:
                logged.reward_status = m.REWARD_STATUS_PENDING
        if len(rows) == query.size:
            last = rows[-1]
            micros = (last.decide_time - EPOCH) // timedelta(microseconds=1)
            response.next_page_token = f"{micros}:{last.decision_id}"
        return response
