"""Which database failures mean "Postgres is not reachable", and logging an outage once.

A Postgres outage is not a bug in the service: every call that needs the database
fails the same way until it is back, and the right answer to the caller is
UNAVAILABLE ("retry"), not INTERNAL (which pages the on-call and logs a traceback per
call). ``database_failure`` is the one place that tells the two apart; the gRPC kit's
interceptor maps what it returns to a status code (ADR 0014). Each pool's ``OutageLog``
logs one warning when an outage starts and one when a statement succeeds again.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Iterator

import asyncpg

from libs.errors import DeadlineExceeded, LatheError, Unavailable

_log = logging.getLogger(__name__)


class DatabaseUnavailable(Unavailable):
    """Postgres could not be reached or did not answer; the call may be retried."""


class DatabaseTimedOut(DatabaseUnavailable, TimeoutError):
    """A statement or a wait for a connection outlasted the pool's timeout (no shorter deadline).

    The statement's connection was closed, so its transaction is rolled back. Also a
    ``TimeoutError``, which is what asyncpg raises for a statement timeout.
    """


class DatabaseDeadlineExceeded(DeadlineExceeded, TimeoutError):
    """The request's deadline passed while a statement ran or waited for a connection.

    The statement's connection was closed, so its transaction is rolled back (unless
    the statement was the COMMIT itself: then it may have committed).
    """


_UNREACHABLE_MESSAGE = "the database is unreachable right now; retry with backoff"

# SQLSTATE classes 08 (connection exceptions) and the server refusing or dropping
# sessions (57P01-57P03: admin/crash shutdown, starting up; 53300: too many connections).
_UNREACHABLE_POSTGRES_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ETIMEDOUT,
    }
)


def database_failure(exc: BaseException) -> LatheError | None:
    """What ``exc`` means for the caller if it is a connection-level database failure.

    Returns the ``DatabaseTimedOut`` / ``DatabaseDeadlineExceeded`` the pool raised
    (also when a later error, e.g. a transaction's exit on the closed connection, was
    raised on top of it), a ``DatabaseUnavailable`` for a lost or refused connection,
    and None for anything else (a bug or a constraint violation is not an outage).
    """
    chain = tuple(_chain(exc))
    for error in chain:
        if isinstance(error, DatabaseUnavailable | DatabaseDeadlineExceeded):
            return error
    for error in chain:
        if _is_unreachable(error):
            unavailable = DatabaseUnavailable(_UNREACHABLE_MESSAGE)
            unavailable.__cause__ = error
            return unavailable
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_unreachable(error: BaseException) -> bool:
    if isinstance(error, _UNREACHABLE_POSTGRES_ERRORS):
        return True
    if isinstance(error, asyncpg.InterfaceError):
        # "connection is closed", "... the underlying connection is closed", "pool is closing"
        message = str(error)
        return "is closed" in message or "is closing" in message
    if isinstance(error, TimeoutError):
        return False  # an OSError too, but from anywhere: only the pool's own count (above)
    if isinstance(error, ConnectionError | socket.gaierror):
        return True
    return isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS


class OutageLog:
    """Logs an outage of a dependency once: a warning when it starts and one when it ends.

    ``failed`` is called for every statement or connection attempt that failed because
    of it (cheap after the first), ``recovered`` whenever the dependency answered (a
    no-op unless down). A ``BoundedPool`` has one; the RPCs' UNAVAILABLE log nothing.
    """

    def __init__(self, dependency: str) -> None:
        self._dependency = dependency
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> None:
        self._failures += 1
        if self._since is not None:
            return
        self._since = time.monotonic()
        cause = error.__cause__ or error
        _log.warning(
            "%s unreachable (%s: %s): calls that need it answer UNAVAILABLE until it is back; "
            "logged once per outage",
            self._dependency,
            type(cause).__name__,
            cause,
        )

    def recovered(self) -> None:
        if self._since is None:
            return
        lasted_s = time.monotonic() - self._since
        failures, self._since, self._failures = self._failures, None, 0
        _log.warning(
            "%s reachable again after %.1f s; %d statements or connection attempts failed "
            "meanwhile",
            self._dependency,
            lasted_s,
            failures,
        )
