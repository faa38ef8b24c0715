"""Who runs a job: a session-level advisory lock per job, on one connection of its own.

A trainer runs a job only while it holds the job's lock (``lathe.trainer.job.<id>``,
through ``libs/db/locks.py``). The locks live on one dedicated connection, not a pooled
one, so they last exactly as long as this trainer's session: a trainer that dies loses
its connection and with it every lock, and the next trainer to poll takes the jobs over.
asyncpg runs one statement at a time per connection, so every use of it is serialized.
Postgres counts a session's takes of one lock, so each take is released once.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

import asyncpg

from libs.db.locks import lock_name, try_session_lock


class JobLocks:
    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._conn: asyncpg.Connection | None = None
        self._guard = asyncio.Lock()
        self._held: dict[str, list[AsyncExitStack]] = {}

    async def try_take(self, job_id: str) -> bool:
        """Take ``job_id``'s lock if no trainer holds it; whether this one now does."""
        async with self._guard:
            if self._conn is None or self._conn.is_closed():
                self._held.clear()  # a new session holds nothing
                self._conn = await asyncpg.connect(self._database_url)
            hold = AsyncExitStack()
            taken = await hold.enter_async_context(
                try_session_lock(self._conn, lock_name("trainer", "job", job_id))
            )
            if taken:
                self._held.setdefault(job_id, []).append(hold)
            return taken

    async def release(self, job_id: str) -> None:
        """Give ``job_id`` up (nothing if it is not held; a broken connection gave it up)."""
        holds = self._held.get(job_id)
        if not holds:
            return
        hold = holds.pop()
        if not holds:
            del self._held[job_id]
        async with self._guard:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await hold.aclose()

    async def close(self) -> None:
        """Drop the connection: every lock goes with it."""
        async with self._guard:
            self._held.clear()
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
            self._conn = None
