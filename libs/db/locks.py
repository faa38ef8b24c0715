"""Postgres advisory locks behind one helper: named keys, transaction or session scope.

Every advisory lock in Lathe is named by text, ``lathe.<what>.<which>`` (``lock_name``),
and Postgres hashes the name to the lock's key with ``hashtext``, so two sites that mean
the same lock cannot disagree on a number, and a name reads in ``pg_locks`` as what it
guards once hashed back. Names stay stable across releases: a replica still running the
previous release must take the same lock as the new one.

Two scopes:

- **transaction** (``xact_lock``, ``try_xact_lock``, ``xact_lock_sql``): released when the
  caller's transaction ends, whatever happens. Use these wherever the guarded work fits in
  one transaction; they cannot leak.
- **session** (``try_session_lock``): held by the connection across transactions, for work
  that commits in steps (a materialization commits page by page). Pooled connections are
  not reset on release (libs/db/pool.py), so the context manager unlocks explicitly.

Names are hashed to 32 bits: unrelated names may collide, which only makes two unrelated
holders wait for each other (never a wrong result); keep the number of names small.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

_PREFIX = "lathe"


def lock_name(*parts: object) -> str:
    """``lathe.<part>.<part>...``: the one way to name a lock."""
    return ".".join((_PREFIX, *(str(part) for part in parts)))


def xact_lock_sql(name_sql: str, *, shared: bool = False) -> str:
    """The SQL expression that waits for a transaction-scoped lock inside another statement
    (one round trip instead of two on a hot path). ``name_sql`` is SQL text evaluating to
    the lock's name, e.g. ``"'lathe.stream.' || $1::text"``; it must not come from a caller.
    """
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    return f"{function}(hashtext({name_sql}))"


async def xact_lock(conn: asyncpg.Connection, name: str, *, shared: bool = False) -> None:
    """Wait for the lock ``name`` until the caller's transaction ends (shared: beside other
    shared holders, excluding an exclusive one)."""
    await conn.execute(f"SELECT {xact_lock_sql('$1::text', shared=shared)}", name)


async def try_xact_lock(conn: asyncpg.Connection, name: str) -> bool:
    """Take the lock ``name`` until the transaction ends if it is free; whether it was."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1::text))", name))


@asynccontextmanager
async def try_session_lock(conn: asyncpg.Connection, name: str) -> AsyncIterator[bool]:
    """Hold the lock ``name`` on ``conn`` for the block if it is free; yields whether it was.

    The lock outlives the block's transactions and is released when the block ends (on
    error too). If the connection breaks meanwhile, Postgres releases it with the session.
    """
    acquired = bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1::text))", name))
    try:
        yield acquired
    finally:
        if acquired and not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1::text))", name)
