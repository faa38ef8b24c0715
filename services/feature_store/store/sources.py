"""Reading a batch source: a Postgres table named by a validated definition.

Identifiers (schema, table, columns) come only from applied definitions, which
were validated as plain identifiers; they are quoted here. Time bounds travel as
bind parameters. Nothing a caller sends at request time reaches this SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from libs.db import quote_ident
from libs.errors import FailedPrecondition
from services.feature_store.domain.definitions.sources import SourceColumn
from services.feature_store.domain.materialization import RunScope
from services.feature_store.domain.times import MAX_TIME, utc

_TABLE = "SELECT to_regclass($1)::oid::bigint"
_COLUMNS = """
    SELECT a.attname AS name, t.typname AS type, format_type(a.atttypid, a.atttypmod) AS shown,
           information_schema._pg_numeric_precision(a.atttypid, a.atttypmod) AS precision,
           information_schema._pg_numeric_scale(a.atttypid, a.atttypmod) AS scale
    FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
    WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped"""


def _table(source: m.BatchSource) -> str:
    return ".".join(quote_ident(part, what="table") for part in source.table.split("."))


async def source_columns(
    executor: asyncpg.Pool | asyncpg.Connection, source: m.BatchSource
) -> dict[str, SourceColumn] | None:
    """The columns of the source's table (as this connection resolves its name), or None
    when there is no such table."""
    oid = await executor.fetchval(_TABLE, _table(source))
    if oid is None:
        return None
    return {
        record["name"]: SourceColumn(
            record["name"], record["type"], record["shown"], record["precision"], record["scale"]
        )
        for record in await executor.fetch(_COLUMNS, oid)
    }


class BatchReader:
    """Pages of a view's source rows in a run's scope (domain/materialization.py), in
    watermark order. Rows without an entity key, event time or watermark are not read.

    An ordinary incremental run (the event bound unchanged) reads ``watermark > through``:
    a range of an index on the watermark column, if the table has one. Only a run that
    widens the event bound also reads older rows whose event time was outside it."""

    def __init__(self, view: m.FeatureView, join_key: str) -> None:
        source = view.batch_source
        self._view, self._table_name = view.name, source.table
        self.watermark_column = source.created_time_column or source.event_time_column
        self._source = _table(source)
        self._entity = quote_ident(source.entity_column or join_key, what="column")
        self._event = quote_ident(source.event_time_column, what="column")
        created = (
            quote_ident(source.created_time_column, what="column")
            if source.created_time_column
            else self._event
        )
        self._mark = quote_ident(self.watermark_column, what="column")
        features = "".join(f", {quote_ident(f.name, what='column')}" for f in view.features)
        self._select = (
            f"SELECT {self._entity}::text AS entity_key, {self._event} AS event_time, "
            f"{created} AS created_time, {self._mark} AS watermark{features} FROM {self._source}"
        )

    def _where(
        self, scope: RunScope, after: datetime | None, *, at: datetime | None = None
    ) -> tuple[str, list[object]]:
        """The WHERE clause selecting ``scope``'s rows with a watermark after ``after``
        (or equal to ``at``), and its arguments."""
        event_until = MAX_TIME if scope.event_until is None else scope.event_until  # infinity
        args: list[object] = [scope.known_until, event_until]
        where = [f"{self._entity} IS NOT NULL", f"{self._mark} <= $1", f"{self._event} <= $2"]
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
            return int(
                await conn.fetchval(f"SELECT count(*) FROM {self._source} WHERE {where}", *args)
            )
        except asyncpg.PostgresError as exc:
            raise FailedPrecondition(
                f"cannot read the batch source of {self._view!r} ({self._table_name}): {exc}"
            ) from exc

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
            return await conn.fetch(query, *args)
        except (OverflowError, ValueError) as exc:  # decoding: a time past year 9999
            raise FailedPrecondition(
                f"the batch source of {self._view!r} ({self._table_name}) holds a time "
                f"outside years 1-9999, which feature values cannot carry: {exc}"
            ) from exc
