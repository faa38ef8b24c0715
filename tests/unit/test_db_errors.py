"""Which database failures are an outage (UNAVAILABLE), and an outage logged once."""

from __future__ import annotations

import errno
import logging

import asyncpg
import pytest

from libs.db import (
    DatabaseDeadlineExceeded,
    DatabaseTimedOut,
    DatabaseUnavailable,
    database_failure,
)
from libs.db.errors import OutageLog


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5432)"),
        ConnectionResetError(errno.ECONNRESET, "reset by peer"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.PostgresConnectionError("connection failure"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash of another process"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InterfaceError(
            "cannot call Transaction.__aexit__(): the underlying connection is closed"
        ),
        asyncpg.InterfaceError("pool is closing"),
    ],
)
def test_connection_level_failures_are_unavailable(error: BaseException) -> None:
    failure = database_failure(error)

    assert isinstance(failure, DatabaseUnavailable)
    assert "database is unreachable" in str(failure)
    assert "retry" in str(failure)
    assert failure.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UniqueViolationError("duplicate key value"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        TimeoutError(),  # from anywhere: only the pool's own timeouts are the database's
        FileNotFoundError(errno.ENOENT, "no such file"),
        KeyError("x"),
    ],
)
def test_other_failures_are_not_an_outage(error: BaseException) -> None:
    assert database_failure(error) is None


def _raised_on_top_of(first: BaseException, then: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise then  # noqa: B904 - the implicit context is the point
    except BaseException as raised:
        return raised


@pytest.mark.parametrize(
    "cause",
    [DatabaseDeadlineExceeded("deadline"), DatabaseTimedOut("command timeout")],
)
def test_the_pools_own_timeout_wins_over_what_was_raised_on_top_of_it(
    cause: BaseException,
) -> None:
    # A transaction's exit on the connection the timeout closed raises InterfaceError.
    on_top = _raised_on_top_of(
        cause, asyncpg.InterfaceError("cannot call Transaction.__aexit__(): connection is closed")
    )

    assert database_failure(on_top) is cause


def test_a_connection_error_underneath_another_error_is_found() -> None:
    on_top = _raised_on_top_of(ConnectionResetError(), RuntimeError("while writing the row"))

    assert isinstance(database_failure(on_top), DatabaseUnavailable)


def test_an_outage_is_logged_when_it_starts_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    outage = OutageLog("Postgres")
    outage.recovered()  # not down: nothing to say

    for _ in range(5):
        outage.failed(DatabaseUnavailable("the database is unreachable"))
    assert outage.down
    outage.recovered()
    outage.recovered()

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("Postgres unreachable")
    assert messages[1].startswith("Postgres reachable again")
    assert "5 statements or connection attempts failed" in messages[1]
    assert all(record.levelno == logging.WARNING for record in caplog.records)
    assert not outage.down
