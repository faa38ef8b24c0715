"""Announcing committed appends to the relay, without NOTIFY inside the append.

A NOTIFY sent from the appending transaction holds Postgres' notification lock
until that transaction's commit is flushed, so concurrent appends could not
share a disk flush (measured: commit throughput fell to a third). Instead an
append, once committed, wakes the relay of this process directly; only when
that relay is not the leader does it send a NOTIFY for the leading replica, from
a statement of its own, coalescing bursts into one.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

_log = logging.getLogger(__name__)


class AppendSignal:
    """The 'new events' doorbell of one event store in one process."""

    def __init__(self, pool: asyncpg.Pool, channel: str) -> None:
        self._pool = pool
        self.channel = channel
        self.local = asyncio.Event()
        """Set on every committed append in this process (and on NOTIFY from others)."""
        self.leading_here = False
        """True while this process's relay is the leader (then no NOTIFY is needed)."""
        self._notifier: asyncio.Task[None] | None = None
        self._again = False

    def appended(self) -> None:
        """Call after events committed."""
        self.local.set()
        if self.leading_here:
            return
        if self._notifier is not None and not self._notifier.done():
            self._again = True  # coalesce: one more NOTIFY after the one in flight
            return
        self._notifier = asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        while True:
            self._again = False
            try:
                await self._pool.execute("SELECT pg_notify($1, '')", self.channel)
            except (asyncpg.PostgresError, OSError) as exc:
                # The leader's polling fallback picks the events up anyway.
                _log.debug("could not NOTIFY %s: %s", self.channel, exc)
            if not self._again:
                return
