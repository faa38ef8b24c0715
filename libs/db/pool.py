"""asyncpg pools with the settings every Lathe service wants.

Every statement is bounded (ADR 0014): by what is left of the current request's
deadline (``libs.deadlines``, set by the gRPC kit) when that is shorter, else by the
pool's command timeout (``LATHE_DB_COMMAND_TIMEOUT_S``, which the service host passes
from its settings); waiting for a pooled connection likewise
(``LATHE_DB_ACQUIRE_TIMEOUT_S``). A statement cut off by a bound closes its
connection, so Postgres rolls its transaction back and nothing of it is left
half-written or half-read on a connection that goes back to the pool; the caller gets
``DatabaseDeadlineExceeded`` or ``DatabaseTimedOut`` (``libs.db.errors``). A statement
given an explicit ``timeout=`` keeps asyncpg's own behaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.db.errors import (
    DatabaseDeadlineExceeded,
    DatabaseTimedOut,
    DatabaseUnavailable,
    OutageLog,
    database_failure,
)
from libs.db.opened_transactions import OpenedTransactionState, Savepoint
from libs.deadlines import remaining_time_s
from libs.errors import LatheError

_CONNECT_ERRORS = (OSError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
DEFAULT_COMMAND_TIMEOUT_S = 60.0
"""``LATHE_DB_COMMAND_TIMEOUT_S``'s default (``LatheSettings.db_command_timeout_s``)."""
DEFAULT_ACQUIRE_TIMEOUT_S = 10.0
"""``LATHE_DB_ACQUIRE_TIMEOUT_S``'s default (``LatheSettings.db_acquire_timeout_s``)."""


async def connect_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    connect_timeout_s: float = 30.0,
    application_name: str = "lathe",
    command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
    acquire_timeout_s: float = DEFAULT_ACQUIRE_TIMEOUT_S,
) -> asyncpg.Pool:
    """Open a pool, retrying while Postgres is still starting (e.g. right after `lathe up`).

    ``command_timeout_s`` bounds each statement and ``acquire_timeout_s`` each wait for a
    connection when the request's deadline does not bound them sooner; 0 means no bound.
    The pool reads no environment: a service host passes its settings'
    ``LATHE_DB_COMMAND_TIMEOUT_S`` / ``LATHE_DB_ACQUIRE_TIMEOUT_S``, and the defaults here
    are theirs (``DEFAULT_COMMAND_TIMEOUT_S``, ``DEFAULT_ACQUIRE_TIMEOUT_S``).

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
            pool = await BoundedPool(
                dsn,
                acquire_timeout_s=acquire_timeout_s or None,
                min_size=min_size,
                max_size=max_size,
                max_queries=50_000,
                max_inactive_connection_lifetime=300.0,
                loop=None,
                connection_class=BoundedConnection,
                record_class=asyncpg.Record,
                reset=_no_reset,
                command_timeout=command_timeout_s or None,
                timeout=connect_timeout_s,  # one connection attempt
                server_settings={"application_name": application_name},
            )
    assert pool is not None
    return pool


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Release without a reset round trip (see ``connect_pool``)."""


class BoundedConnection(asyncpg.Connection):
    """A connection whose statements are bounded by the request's deadline or the pool's timeout.

    Each query method without an explicit ``timeout=`` gets the shorter of what is left
    of the current request's deadline and the pool's command timeout. When that bound
    cuts a statement off, the connection is closed at once (not cancelled: on a
    stalled network a cancel request stalls too) and ``DatabaseDeadlineExceeded`` or
    ``DatabaseTimedOut`` is raised. Connection-level failures and the pool's timeouts
    are reported to the pool's ``outage`` log, and a statement that succeeds ends it.
    """

    outage: OutageLog | None = None
    """The outage log of the pool the connection belongs to (set when it is opened)."""
    opened_transaction: OpenedTransactionState | None = None
    """Whether ``transaction_opened_with`` has a transaction open here (set when opened)."""

    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False, deferrable: bool = False
    ) -> Any:
        """asyncpg's transaction, or a savepoint inside ``transaction_opened_with``."""
        state = self.opened_transaction
        if state is None or not state.open:
            return super().transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            )
        state.savepoints_taken += 1
        return Savepoint(
            self,
            f"lathe_savepoint_{state.savepoints_taken}",
            isolation=isolation,
            readonly=readonly,
            deferrable=deferrable,
        )

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        return await self._bounded(super().execute, query, *args, **kwargs)

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> None:
        return await self._bounded(super().executemany, command, args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._bounded(super().fetch, query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._bounded(super().fetchval, query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._bounded(super().fetchrow, query, *args, **kwargs)

    async def fetchmany(self, query: str, args: Any, **kwargs: Any) -> Any:
        return await self._bounded(super().fetchmany, query, args, **kwargs)

    async def copy_from_table(self, table_name: str, **kwargs: Any) -> str:
        return await self._bounded(super().copy_from_table, table_name, **kwargs)

    async def copy_from_query(self, query: str, *args: Any, **kwargs: Any) -> str:
        return await self._bounded(super().copy_from_query, query, *args, **kwargs)

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        return await self._bounded(super().copy_to_table, table_name, **kwargs)

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> str:
        return await self._bounded(super().copy_records_to_table, table_name, **kwargs)

    async def _bounded(
        self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        if kwargs.get("timeout") is not None:  # the caller chose: asyncpg's own behaviour
            return await method(*args, **kwargs)
        bound, by_deadline = _bound(self._config.command_timeout)
        kwargs["timeout"] = bound
        try:
            result = await method(*args, **kwargs)
        except TimeoutError as exc:
            if isinstance(exc, LatheError):  # raised by a nested bounded call
                raise
            self.terminate()  # Postgres rolls back whatever the connection had open
            raise _failed(self.outage, _timed_out(by_deadline, bound, acquiring=False)) from exc
        except Exception as exc:
            _failed(self.outage, exc)
            raise
        if self.outage is not None and self.outage.down:
            self.outage.recovered()
        return result


class BoundedPool(asyncpg.Pool):
    """A pool whose waits for a connection are bounded like ``BoundedConnection``'s statements.

    ``outage`` logs this pool's database outages, once each.
    """

    def __init__(self, *args: Any, acquire_timeout_s: float | None, **kwargs: Any) -> None:
        super().__init__(*args, connect=self._open, **kwargs)
        self._acquire_timeout_s = acquire_timeout_s
        self.outage = OutageLog("Postgres")

    async def _open(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        connection = await asyncpg.connect(*args, **kwargs)
        connection.outage = self.outage
        connection.opened_transaction = OpenedTransactionState()
        return connection

    async def _acquire(self, requested_s: float | None) -> Any:
        # asyncpg's one path for `acquire()`, `async with acquire()` and pool.fetch & co.
        if requested_s is not None:
            return await super()._acquire(requested_s)
        bound, by_deadline = _bound(self._acquire_timeout_s)
        try:
            return await super()._acquire(bound)
        except TimeoutError as exc:
            if isinstance(exc, LatheError):
                raise
            raise _failed(self.outage, _timed_out(by_deadline, bound, acquiring=True)) from exc
        except Exception as exc:  # e.g. the connection it opened was refused
            _failed(self.outage, exc)
            raise


_DEADLINE_MARGIN_S = 0.02


def _bound(limit: float | None) -> tuple[float | None, bool]:
    """The timeout for a wait on the database, and whether the request's deadline set it.

    A little (up to 20 ms) short of the deadline, so that the bound fires before gRPC
    cancels the call at the deadline: the statement then ends by closing its connection
    (at once), not by asyncpg's cancel request, which on a stalled network holds the
    connection until the pool's timeouts give up on it.
    """
    remaining = remaining_time_s()
    if remaining is None:
        return limit, False
    bounded = remaining - min(_DEADLINE_MARGIN_S, remaining / 10)
    if limit is not None and limit <= bounded:
        return limit, False
    return bounded, True


def _failed(outage: OutageLog | None, error: Exception) -> Exception:
    """``error``, after telling ``outage`` if it is the database's failure (not the deadline)."""
    if outage is not None and isinstance(database_failure(error), DatabaseUnavailable):
        outage.failed(error)
    return error


def _timed_out(by_deadline: bool, bound: float | None, acquiring: bool) -> LatheError:
    if by_deadline:
        return DatabaseDeadlineExceeded(
            "the call's deadline passed while it waited for the database; give the call a "
            "longer deadline, or retry if the database is slow right now"
        )
    waited = (
        f"no database connection became free within {bound:g} s (LATHE_DB_ACQUIRE_TIMEOUT_S)"
        if acquiring
        else f"the database did not answer within {bound:g} s (LATHE_DB_COMMAND_TIMEOUT_S)"
    )
    return DatabaseTimedOut(f"{waited}: it is unreachable or overloaded; retry with backoff")


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
