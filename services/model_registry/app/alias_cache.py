"""Resolved aliases held in memory, forgotten the moment Postgres says they changed.

``ResolveAlias`` is the registry's hot read. Serving it from memory saves the Postgres
round trip; correctness comes from the database telling every registry process which
alias changed (a trigger NOTIFYs at commit, migration 0003), not from a time limit:

- A write in this process forgets the alias itself right after it commits, so a client
  that moved an alias and resolves it on the same process sees its own write.
- Another process's write reaches this one as a notification within milliseconds; until
  then this process may answer the previous version (documented in ADR 0006).
- A lookup that started before a change never stores its (older) answer: every change
  bumps one counter, and an answer is kept only if the counter has not moved since the
  lookup began (changes are rare, so the odd lookup that is not kept costs nothing).
- While the listening connection is down, nothing is served from memory: notifications
  may have been missed, so the cache is emptied and every lookup reads Postgres until it
  listens again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from services.model_registry.store.queries import AliasState

_log = logging.getLogger(__name__)

CHANNEL = "lathe_model_registry_aliases"
_RETRY_S = 1.0

_Key = tuple[str, str]
Lookup = Callable[[str, str], Awaitable[AliasState | None]]


class AliasCache:
    def __init__(self, pool: asyncpg.Pool, lookup: Lookup) -> None:
        self._pool = pool
        self._lookup = lookup
        self._entries: dict[_Key, AliasState] = {}
        self._changes = 0
        """Bumped by every forget: a lookup that overlapped one does not keep its answer."""
        self._listening = False

    @property
    def listening(self) -> bool:
        return self._listening

    async def alias(self, model_name: str, alias: str) -> AliasState | None:
        """The alias as committed in Postgres (see the module's notes on other processes)."""
        key = (model_name, alias)
        cached = self._entries.get(key)
        if cached is not None:
            return cached
        started = self._changes
        state = await self._lookup(model_name, alias)
        if state is not None and self._listening and self._changes == started:
            self._entries[key] = state
        return state

    def forget(self, model_name: str, alias: str) -> None:
        self._entries.pop((model_name, alias), None)
        self._changes += 1

    def forget_all(self) -> None:
        self._entries.clear()
        self._changes += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Listen for alias changes until ``stop``; reconnect when the connection drops."""
        while not stop.is_set():
            try:
                await self._listen(stop)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                _log.warning("alias change listener lost (%r); reading Postgres meanwhile", exc)
            finally:
                self.forget_all()  # what was cached may have missed a notification
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _RETRY_S)

    async def _listen(self, stop: asyncio.Event) -> None:
        async with self._pool.acquire() as conn:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            try:
                # Anything cached before this point may have missed a notification.
                self.forget_all()
                self._listening = True
                stopping = asyncio.ensure_future(stop.wait())
                dropped = asyncio.ensure_future(lost.wait())
                try:
                    await asyncio.wait({stopping, dropped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    dropped.cancel()
                if lost.is_set():
                    raise ConnectionError("the listening connection closed")
            finally:
                self._listening = False
                if not conn.is_closed():
                    # Pooled connections are not reset on release (libs/db/pool.py).
                    await conn.remove_listener(CHANNEL, self._on_notify)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if not payload:
            self.forget_all()
            return
        model_name, alias = json.loads(payload)
        self.forget(model_name, alias)
