"""asyncpg pools with the settings every Lathe service wants."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

_CONNECT_ERRORS = (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)


async def connect_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout_s: float = 30.0,
    application_name: str = "lathe",
) -> asyncpg.Pool:
    """Open a pool, retrying while Postgres is still starting (e.g. right after `lathe up`).

    Connections are not reset when released (asyncpg would spend a round trip per
    release on ``RESET ALL; UNLISTEN *; ...``). So never leave session state on a
    pooled connection: use ``SET LOCAL`` and transaction-scoped advisory locks, or
    undo it before release as the relay does with its LISTEN and leader lock.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(_CONNECT_ERRORS),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(connect_timeout_s),
        reraise=True,
    ):
        with attempt:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                server_settings={"application_name": application_name},
                reset=_no_reset,
            )
    assert pool is not None
    return pool


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Release without a reset round trip (see ``connect_pool``)."""


_after_commit: ContextVar[list[Callable[[], None]] | None] = ContextVar(
    "lathe_after_commit", default=None
)


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection inside a transaction: commit on success, roll back on error.

    Callbacks registered with ``on_commit`` inside the block run after the commit.
    """
    callbacks: list[Callable[[], None]] = []
    token = _after_commit.set(callbacks)
    try:
        async with pool.acquire() as conn, conn.transaction():
            yield conn
    finally:
        _after_commit.reset(token)
    for callback in callbacks:  # reached only when the transaction committed
        callback()


def on_commit(callback: Callable[[], None]) -> None:
    """Run ``callback`` once the enclosing ``transaction()`` commits (now if there is none).

    A rolled-back transaction drops it. Used to announce appended events only once
    they are visible.
    """
    pending = _after_commit.get()
    if pending is None:
        callback()
    else:
        pending.append(callback)
