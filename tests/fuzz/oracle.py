"""What a fuzzed call may and may not do, judged from its outcome.

A caller's mistake gets a deliberate status with a message that says what to fix.
So a call is a finding when it:

- ends INTERNAL or UNKNOWN (the server did not know what went wrong),
  DEADLINE_EXCEEDED (our 5 s deadline: the server hung), UNAVAILABLE (the platform is
  up the whole run, so the call broke something), CANCELLED (nobody cancelled it) or
  DATA_LOSS (nothing is corrupted here);
- fails with an empty message, or one showing Python internals (a traceback, an
  exception class, an object repr);
- leaves the service not SERVING, or makes it log an error while answering deliberately;
- fails but changed the service's tables ("half-written"), or is marked
  NO_SIDE_EFFECTS yet changed them whatever its outcome — except that a call that
  succeeded may log what it served (``LOG_EVENTS``: inference's prediction and decision
  logs, written off the response path; the platform waits for them before looking);
- succeeds with a reply that does not decode as the declared response type.

"Changed the tables" compares, per table of the service's Postgres schema, the row
count and the newest row version (``max(xmin)``) before and after the call. Calls run
one at a time, and the tables the service writes in the background on its own
(``BACKGROUND_TABLES``) are left out, so a difference is the call's doing. (No service
appends events in the background today: the feature store's stream ingestion writes
``stream_events`` and tiles only when something publishes on ``<namespace>.ingest.>``,
which the fuzz does not; the relay writes only its checkpoint.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg
import grpc
from google.protobuf.message import DecodeError

from tests.fuzz.server_log import LoggedError
from tests.fuzz.targets import FuzzTarget

BAD_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DATA_LOSS,
    }
)

_INTERNALS = re.compile(
    r"Traceback|File \"|\bException\b|\b[A-Z][A-Za-z]*(?:Error|Exception)\b(?!\w)"
    r"|<class '|object at 0x|\basyncpg\.|\bgoogle\.protobuf\.(?!(?:Timestamp|Duration)\b)"
    r"|\bpyarrow\.|\bduckdb\."
)
"""Signs of Python internals in a status message (``InvalidArgument``-style names of our
own error classes never reach the wire: the interceptor sends only their text)."""

_USER_FUNCTION_ERROR = re.compile(r"on-demand view '[^']*' failed on row \d+: \w+: ")
"""How the feature store quotes the exception of a user's on-demand function, by design
(``feature_store/domain/on_demand/runner.py``): the class name tells the definition's
author what their function hit (e.g. a null request value). Their code, not ours."""

BACKGROUND_TABLES = frozenset({"checkpoints", "processed_events", "upload_leases"})
"""Written by the relay (its checkpoint), by consumers, and by the registry's upload-lease
renewal, each on its own schedule."""

FINGERPRINT_FUNCTION = """
CREATE OR REPLACE FUNCTION public.lathe_fuzz_fingerprint(target text)
RETURNS TABLE (table_name text, row_count bigint, newest_xmin bigint)
LANGUAGE plpgsql AS $$
DECLARE t record;
BEGIN
    FOR t IN
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = target AND c.relkind = 'r' ORDER BY c.relname
    LOOP
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, count(*), coalesce(max(xmin::text::bigint), 0) FROM %I.%I',
            t.relname, target, t.relname);
    END LOOP;
END
$$"""
"""Installed in the fuzz database's ``public`` schema (not the services' own)."""

LOG_EVENTS = frozenset({"PredictionLogged"})
"""Logs of what a call served: a successful call may append them (with the rows written
in the same transaction, ``LOG_TABLES``) even when it is NO_SIDE_EFFECTS, as Predict is.
A failed call must log nothing."""

LOG_TABLES = frozenset({"events", "streams", "decisions"})
"""What writing logs changes: the event store's tables, and inference's decision rows."""

Fingerprint = Mapping[str, tuple[int, int]]
"""Table name -> (row count, newest row version)."""


async def fingerprint(pool: asyncpg.Pool, schema: str) -> Fingerprint:
    rows = await pool.fetch("SELECT * FROM public.lathe_fuzz_fingerprint($1)", schema)
    return {
        r["table_name"]: (r["row_count"], r["newest_xmin"])
        for r in rows
        if r["table_name"] not in BACKGROUND_TABLES
    }


def changed_tables(before: Fingerprint, after: Fingerprint) -> list[str]:
    """Tables created, dropped or written between the two fingerprints."""
    described = []
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            described.append(f"{name} (created)")
        elif name not in after:
            described.append(f"{name} (dropped)")
        elif before[name] != after[name]:
            rows = after[name][0] - before[name][0]
            described.append(f"{name} ({rows:+d} rows)" if rows else f"{name} (rows updated)")
    return described


@dataclass(frozen=True)
class Outcome:
    """What one call did, as seen from outside the service."""

    code: grpc.StatusCode
    details: str
    replies: tuple[bytes, ...]
    changed: tuple[str, ...]
    """Tables of the service's schema the call changed (see ``changed_tables``)."""
    new_events: tuple[str, ...]
    """Types of the events appended meanwhile (each call sends its own ``x-request-id``,
    which events keep as their correlation id; any other is marked "another caller's")."""
    health: str
    """The service's health status name after the call (SERVING when all is well)."""
    logged: tuple[LoggedError, ...] = ()
    """ERROR records the services logged while the call ran."""

    @property
    def cause(self) -> str:
        """The first logged exception (what an INTERNAL answer hid), or ""."""
        return next((r.cause for r in self.logged if r.cause), "")


@dataclass(frozen=True)
class Problem:
    """One way a call broke the rules; ``kind`` and ``code`` group findings."""

    kind: str
    summary: str


def judge(target: FuzzTarget, outcome: Outcome) -> list[Problem]:
    problems: list[Problem] = []
    failed = outcome.code != grpc.StatusCode.OK
    if outcome.code in BAD_CODES:
        problems.append(Problem("status", f"answered {outcome.code.name}"))
    if outcome.logged and outcome.code not in BAD_CODES:
        # With a bad status the log is its explanation (``Outcome.cause``); without one,
        # the service hit an error the caller never heard of.
        first = outcome.logged[0]
        problems.append(
            Problem(
                "server-log",
                f"the service logged an error ({first.logger}: {first.message[:120]}) while "
                "the call ran, yet answered it (background work may also log during a call)",
            )
        )
    if failed and not outcome.details.strip():
        problems.append(Problem("message", f"{outcome.code.name} with an empty message"))
    elif failed and _INTERNALS.search(_USER_FUNCTION_ERROR.sub("", outcome.details)):
        problems.append(Problem("message", "the status message shows Python internals"))
    if outcome.health != "SERVING":
        problems.append(Problem("health", f"health is {outcome.health} after the call"))
    if outcome.changed and (failed or (target.read_only and not _only_logs(outcome))):
        why = "failed" if failed else "is NO_SIDE_EFFECTS"
        events = f"; events appended: {', '.join(outcome.new_events)}" if outcome.new_events else ""
        problems.append(
            Problem(
                "half-written" if failed else "read-wrote",
                f"the call {why} but changed {', '.join(outcome.changed)}{events}",
            )
        )
    if not failed:
        for index, reply in enumerate(outcome.replies):
            try:
                target.response_type.FromString(reply)
            except DecodeError:
                problems.append(Problem("reply", f"reply {index} does not decode"))
                break
    return problems


def _only_logs(outcome: Outcome) -> bool:
    """The call appended logs (``LOG_EVENTS``) and changed nothing but what they fill."""
    types = {event.split(" ", 1)[0] for event in outcome.new_events}
    tables = {change.split(" ", 1)[0] for change in outcome.changed}
    return bool(types) and types <= LOG_EVENTS and tables <= LOG_TABLES


_SHAPES = [
    (re.compile(r"[0-9a-f]{32}"), "<hex>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""), "<q>"),
    (re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"), "<n>"),
]


def message_shape(details: str) -> str:
    """``details`` with ids, quoted values and numbers blanked, to group alike findings."""
    shape = details
    for pattern, placeholder in _SHAPES:
        shape = pattern.sub(placeholder, shape)
    return shape[:160]
