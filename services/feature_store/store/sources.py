"""Reading a batch source: a Postgres table, or a query, named by a validated definition.

Identifiers (schema, table, columns) come only from applied definitions, which
were validated as plain identifiers; they are quoted here. Time bounds travel as
bind parameters. Nothing a caller sends at request time reaches this SQL text.

A query source is SQL by design, from a definition whoever may apply definitions wrote
(ADR 0016's trust, ADR 0022). Postgres decides what it is (``describe``): EXPLAIN in a
read-only transaction (one statement — the extended protocol refuses several — that
plans, with no ModifyTable or LockRows node), a temporary view in a transaction that is
rolled back (its result columns and their exact types; refuses SELECT ... INTO and
writes in WITH), and a first row read read-only under a short timeout (a function that
writes fails there). Materialize then reads it as ``(<query>) AS lathe_source`` in a
read-only transaction with a statement timeout, so whatever it holds can only read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from libs.db import quote_ident
from libs.errors import FailedPrecondition
from services.feature_store.domain.definitions.sources import (
    QUERY_PROBE_TIMEOUT_S,
    QUERY_TIMEOUT_S,
    SourceColumn,
    entity_columns,
    feature_columns,
    plan_problems,
    query_refusal,
    source_label,
)
from services.feature_store.domain.materialization import RunScope
from services.feature_store.domain.times import MAX_TIME, utc

_TABLE = "SELECT to_regclass($1)::oid::bigint"
_COLUMNS = """
    SELECT a.attname AS name, t.typname AS type, format_type(a.atttypid, a.atttypmod) AS shown,
           information_schema._pg_numeric_precision(a.atttypid, a.atttypmod) AS precision,
           information_schema._pg_numeric_scale(a.atttypid, a.atttypmod) AS scale
    FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
    WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped"""


_PROBE_VIEW = "lathe_query_probe"


def _table(source: m.BatchSource) -> str:
    return ".".join(quote_ident(part, what="table") for part in source.table.split("."))


def _from(source: m.BatchSource) -> str:
    """What a read selects from: the quoted table, or the query as a subquery (on lines of
    its own, so a trailing comment cannot swallow the closing parenthesis)."""
    if source.query:
        return f"(\n{source.query}\n) AS lathe_source"
    return _table(source)


async def source_columns(
    executor: asyncpg.Pool | asyncpg.Connection, source: m.BatchSource
) -> dict[str, SourceColumn] | None:
    """The columns of the source's table (as this connection resolves its name), or None
    when there is no such table."""
    oid = await executor.fetchval(_TABLE, _table(source))
    if oid is None:
        return None
    return await _columns(executor, oid)


async def _columns(
    executor: asyncpg.Pool | asyncpg.Connection, oid: int
) -> dict[str, SourceColumn]:
    return {
        record["name"]: SourceColumn(
            record["name"], record["type"], record["shown"], record["precision"], record["scale"]
        )
        for record in await executor.fetch(_COLUMNS, oid)
    }


async def describe(
    conn: asyncpg.Connection, source: m.BatchSource
) -> tuple[dict[str, SourceColumn] | None, list[str]]:
    """(columns, refusals) of a batch source: a table's columns (None: no such table), or
    for a query, what Postgres says of it (module docstring). ``conn`` must not be in a
    transaction when the source is a query (it opens its own)."""
    if not source.query:
        return await source_columns(conn, source), []
    query = source.query
    try:
        async with _read_only(conn, QUERY_PROBE_TIMEOUT_S):
            plan = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON)\n{query}"))
    except asyncpg.PostgresError as exc:
        return None, [query_refusal("explain", exc.sqlstate or "", str(exc))]
    except asyncpg.InterfaceError as exc:  # asyncpg counts $n parameters before sending
        return None, [query_refusal("explain", "parameters", str(exc))]
    problems = plan_problems(plan)
    if problems:
        return None, problems
    try:
        async with _rolled_back(conn, QUERY_PROBE_TIMEOUT_S):
            await conn.fetch(f"CREATE TEMPORARY VIEW {_PROBE_VIEW} AS\n{query}\n")
            oid = await conn.fetchval("SELECT $1::regclass::oid::bigint", f"pg_temp.{_PROBE_VIEW}")
            columns = await _columns(conn, oid)
    except asyncpg.PostgresError as exc:
        return None, [query_refusal("describe", exc.sqlstate or "", str(exc))]
    try:
        async with _read_only(conn, QUERY_PROBE_TIMEOUT_S):
            await conn.fetch(f"SELECT * FROM {_from(source)} LIMIT 1")
    except asyncpg.QueryCanceledError:
        pass  # slow to produce a row: not refused, only not probed
    except asyncpg.PostgresError as exc:
        return None, [query_refusal("probe", exc.sqlstate or "", str(exc))]
    return columns, []


class _RollBack(Exception):
    """Ends a probe's transaction by rolling it back."""


@asynccontextmanager
async def _rolled_back(conn: asyncpg.Connection, timeout_s: float) -> AsyncIterator[None]:
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            yield
            raise _RollBack
    except _RollBack:
        pass


@asynccontextmanager
async def _read_only(conn: asyncpg.Connection, timeout_s: float) -> AsyncIterator[None]:
    """A read-only transaction whose statements each end within ``timeout_s``, rolled
    back (nothing it does may last: it only read)."""
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            yield
            raise _RollBack
    except _RollBack:
        pass


class BatchReader:
    """Pages of a view's source rows in a run's scope (domain/materialization.py), in
    watermark order. Rows without an entity key, event time or watermark are not read.

    An ordinary incremental run (the event bound unchanged) reads ``watermark > through``:
    a range of an index on the watermark column, if the table has one. Only a run that
    widens the event bound also reads older rows whose event time was outside it."""

    def __init__(self, view: m.FeatureView, join_keys: str | Sequence[str]) -> None:
        source = view.batch_source
        self._view, self._table_name = view.name, source_label(source)
        self._query = bool(source.query)
        self.watermark_column = source.created_time_column or source.event_time_column
        self._source = _from(source)
        keys = (join_keys,) if isinstance(join_keys, str) else tuple(join_keys)
        self._entities = [
            quote_ident(column, what="column") for column in entity_columns(source, keys)
        ]
        # A composite key's parts come as one text[] (domain/writes.row_from_source
        # encodes them, ADR 0023).
        entity = (
            f"{self._entities[0]}::text"
            if len(self._entities) == 1
            else "ARRAY[" + ", ".join(f"{c}::text" for c in self._entities) + "]"
        )
        self._event = quote_ident(source.event_time_column, what="column")
        created = (
            quote_ident(source.created_time_column, what="column")
            if source.created_time_column
            else self._event
        )
        self._mark = quote_ident(self.watermark_column, what="column")
        features = "".join(
            f", {quote_ident(column, what='column')} AS {quote_ident(feature, what='column')}"
            for feature, column in feature_columns(view).items()
        )
        self._select = (
            f"SELECT {entity} AS entity_key, {self._event} AS event_time, "
            f"{created} AS created_time, {self._mark} AS watermark{features} FROM {self._source}"
        )

    def _where(
        self, scope: RunScope, after: datetime | None, *, at: datetime | None = None
    ) -> tuple[str, list[object]]:
        """The WHERE clause selecting ``scope``'s rows with a watermark after ``after``
        (or equal to ``at``), and its arguments."""
        event_until = MAX_TIME if scope.event_until is None else scope.event_until  # infinity
        args: list[object] = [scope.known_until, event_until]
        where = [f"{c} IS NOT NULL" for c in self._entities]
        where += [f"{self._mark} <= $1", f"{self._event} <= $2"]
        lower = after
        if scope.read_through is not None:
            if scope.read_events == scope.event_until:  # the same bound: only newer rows
                lower = scope.read_through if after is None else max(after, scope.read_through)
            else:  # a wider bound: also older rows whose event time was outside the old one
                read_events = MAX_TIME if scope.read_events is None else scope.read_events
                args += [scope.read_through, read_events]
                where.append(f"({self._mark} > ${len(args) - 1} OR {self._event} > ${len(args)})")
        if at is not None:
            args.append(at)
            where.append(f"{self._mark} = ${len(args)}")
        elif lower is not None:
            args.append(lower)
            where.append(f"{self._mark} > ${len(args)}")
        return " AND ".join(where), args

    async def pending(self, conn: asyncpg.Connection, scope: RunScope) -> int:
        """How many source rows the run will read; FailedPrecondition when the source
        cannot be read as the definition says (missing table or column)."""
        where, args = self._where(scope, None)
        try:
            async with self._reading(conn):
                return int(
                    await conn.fetchval(f"SELECT count(*) FROM {self._source} WHERE {where}", *args)
                )
        except asyncpg.PostgresError as exc:
            raise self._unreadable(exc) from exc

    @asynccontextmanager
    async def _reading(self, conn: asyncpg.Connection) -> AsyncIterator[None]:
        """For a query source, a read-only transaction with a statement timeout."""
        if not self._query:
            yield
            return
        async with conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT_S * 1000)}")
            yield

    def _unreadable(self, exc: asyncpg.PostgresError) -> FailedPrecondition:
        where = f"the batch source of {self._view!r} ({self._table_name})"
        if isinstance(exc, asyncpg.QueryCanceledError) and self._query:
            return FailedPrecondition(
                f"{where} did not answer within {QUERY_TIMEOUT_S:g}s (each page of a "
                "materialization is one statement): make the query cheaper, e.g. index its "
                f"watermark column, or read a materialized view as a table: {exc}"
            )
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return FailedPrecondition(
                f"{where} tried to write; a query source may only read: {exc}"
            )
        return FailedPrecondition(f"cannot read {where}: {exc}")

    async def page(
        self, conn: asyncpg.Connection, scope: RunScope, after: datetime | None, size: int
    ) -> tuple[Sequence[asyncpg.Record], datetime | None]:
        """Up to about ``size`` rows after the watermark ``after`` (None: from the first),
        never splitting rows that share a watermark.

        Returns the rows and the watermark they complete (None when there are none).
        """
        where, args = self._where(scope, after)
        query = f"{self._select} WHERE {where} ORDER BY {self._mark} LIMIT ${len(args) + 1}"
        rows = await self._fetch(conn, query, *args, size)
        if not rows:
            return rows, None
        last = utc(rows[-1]["watermark"])
        if len(rows) < size:
            return rows, last
        head = [r for r in rows if utc(r["watermark"]) < last]
        if head:
            return head, utc(head[-1]["watermark"])
        # Every row of the page shares one watermark: take all rows that have it.
        where, args = self._where(scope, None, at=last)
        return await self._fetch(conn, f"{self._select} WHERE {where}", *args), last

    async def _fetch(self, conn: asyncpg.Connection, query: str, *args: object) -> list:  # type: ignore[type-arg]
        try:
            async with self._reading(conn):
                return await conn.fetch(query, *args)
        except asyncpg.PostgresError as exc:
            if not self._query:
                raise
            raise self._unreadable(exc) from exc
        except (OverflowError, ValueError) as exc:  # decoding: a time past year 9999
            raise FailedPrecondition(
                f"the batch source of {self._view!r} ({self._table_name}) holds a time "
                f"outside years 1-9999, which feature values cannot carry: {exc}"
            ) from exc
