"""Transactions whose ``BEGIN`` travels with their first statement: one round trip, not two.

asyncpg's ``conn.transaction()`` sends ``BEGIN`` on its own. For a short transaction on
a hot path (a consumer's batch: record the events, run the handlers, commit) that round
trip is a third of its time in Postgres (ADR 0013). ``transaction_opened_with`` sends
``BEGIN; <statement>`` as one message, by the simple query protocol, so the statement
takes no parameters: splice values into it only through ``libs.db.literals``.

asyncpg does not know about a transaction it did not open, so code running inside one
(e.g. a consumer's handlers) that calls ``conn.transaction()`` gets a ``Savepoint`` from
``BoundedConnection`` instead: the nesting asyncpg gives inside its own transactions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import asyncpg


class OpenedTransactionState:
    """Per connection: whether a ``transaction_opened_with`` block is open on it."""

    def __init__(self) -> None:
        self.open = False
        self.savepoints_taken = 0


@asynccontextmanager
async def transaction_opened_with(conn: asyncpg.Connection, statement: str) -> AsyncIterator[str]:
    """Run ``statement`` as the first of a new transaction, in the same round trip as ``BEGIN``.

    ``conn`` comes from ``libs.db.connect_pool``. Yields the statement's status (e.g.
    ``INSERT 0 3``); commits when the block ends and rolls back when it raises (a
    connection that cannot roll back is closed, never returned to the pool inside a
    transaction). Inside the block ``conn.transaction()`` gives savepoints.
    """
    # On a pool's connection that has closed meanwhile this raises InterfaceError, as
    # asyncpg's own transaction() does: the caller sees the database gone, not a bug.
    if conn.is_in_transaction():
        raise asyncpg.InterfaceError(
            "transaction_opened_with needs a connection outside any transaction"
        )
    state = getattr(conn, "opened_transaction", None)
    if not isinstance(state, OpenedTransactionState):
        raise TypeError("transaction_opened_with needs a connection from libs.db.connect_pool")
    try:
        status = await conn.execute(f"BEGIN; {statement}")
        state.open, state.savepoints_taken = True, 0
        yield status
    except BaseException:
        state.open = False
        await _roll_back_or_close(conn)
        raise
    state.open = False
    await conn.execute("COMMIT")


async def _roll_back_or_close(conn: asyncpg.Connection) -> None:
    if conn.is_closed() or not conn.is_in_transaction():
        return
    try:
        await conn.execute("ROLLBACK")
    except Exception:
        conn.terminate()


class Savepoint:
    """A ``conn.transaction()`` nested in an opened transaction: ``SAVEPOINT`` on start,
    ``RELEASE`` on commit, ``ROLLBACK TO`` on rollback."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        name: str,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> None:
        # asyncpg refuses options that differ from its outer transaction's; an opened
        # transaction is read committed and read-write.
        if isolation not in (None, "read_committed") or readonly or deferrable:
            raise asyncpg.InterfaceError(
                "a nested transaction cannot change the isolation level, read-only or "
                "deferrable mode of the transaction it runs in (read committed, read-write)"
            )
        self._conn = conn
        self._name = name

    async def start(self) -> None:
        await self._conn.execute(f"SAVEPOINT {self._name}")

    async def commit(self) -> None:
        await self._conn.execute(f"RELEASE SAVEPOINT {self._name}")

    async def rollback(self) -> None:
        await self._conn.execute(f"ROLLBACK TO SAVEPOINT {self._name}")

    async def __aenter__(self) -> Savepoint:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Any:
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()
        return False
