"""Rows of the future whose time has come move into the online store's current rows.

A row written before its event time waits in the pending table beside the entity's
current row (ADR 0019). Reads never need this pass — every read, from memory or from
Postgres, answers the latest row whose event time has come — but without it the pending
table would keep every such row forever, and each replica's chains would grow by one
row per row of the future ever written. Every feature-store process runs it; the
statement skips rows another process is moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import asyncpg

from services.feature_store.store import online

_log = logging.getLogger(__name__)
INTERVAL_S = 30.0


class PendingPromoter:
    def __init__(self, pool: asyncpg.Pool, *, interval_s: float = INTERVAL_S) -> None:
        self._pool = pool
        self._interval_s = interval_s

    async def promote(self) -> int:
        """Move every pending row that is due now; how many."""
        async with self._pool.acquire() as conn:
            return await online.promote_due(conn, datetime.now(UTC))

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: promote every ``interval_s`` until ``stop``."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
            if stop.is_set():
                return
            try:
                moved = await self.promote()
            except Exception as exc:  # housekeeping: the next round retries
                _log.warning("could not promote due online rows (%r); retrying later", exc)
            else:
                if moved:
                    _log.info("%d online row(s) of the future came due", moved)
