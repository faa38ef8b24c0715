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


def _table(source: m.BatchSource) -> str:
    return ".".join(quote_ident(part, what="table") for part in source.table.split("."))


class BatchReader:
    """Pages of a view's source rows whose watermark falls in (after, until]."""

    def __init__(self, view: m.FeatureView, join_key: str) -> None:
        source = view.batch_source
        self._view, self._table_name = view.name, source.table
        self.watermark_column = source.created_time_column or source.event_time_column
        table = _table(source)
        entity = quote_ident(source.entity_column or join_key, what="column")
        event = quote_ident(source.event_time_column, what="column")
        created = (
            quote_ident(source.created_time_column, what="column")
            if source.created_time_column
            else event
        )
        mark = quote_ident(self.watermark_column, what="column")
        features = "".join(f", {quote_ident(f.name, what='column')}" for f in view.features)
        select = (
            f"SELECT {entity}::text AS entity_key, {event} AS event_time, "
            f"{created} AS created_time, {mark} AS watermark{features} FROM {table}"
        )
        self._page = f"{select} WHERE {mark} > $1 AND {mark} <= $2 ORDER BY {mark} LIMIT $3"
        self._tie = f"{select} WHERE {mark} = $1"
        self._bounds = f"SELECT count(*) FROM {table} WHERE {mark} > $1 AND {mark} <= $2"

    async def pending(self, conn: asyncpg.Connection, after: datetime, until: datetime) -> int:
        """How many source rows a run over (after, until] will read; FailedPrecondition
        when the source cannot be read as the definition says (missing table or column)."""
        try:
            return int(await conn.fetchval(self._bounds, after, until))
        except asyncpg.PostgresError as exc:
            raise FailedPrecondition(
                f"cannot read the batch source of {self._view!r} ({self._table_name}): {exc}"
            ) from exc

    async def page(
        self, conn: asyncpg.Connection, after: datetime, until: datetime, size: int
    ) -> tuple[Sequence[asyncpg.Record], datetime | None]:
        """Up to about ``size`` rows after ``after``, never splitting rows that share a watermark.

        Returns the rows and the watermark they complete (None when there are none).
        """
        rows = await conn.fetch(self._page, after, until, size)
        if not rows:
            return rows, None
        last = rows[-1]["watermark"]
        if len(rows) < size:
            return rows, last
        head = [r for r in rows if r["watermark"] < last]
        if head:
            return head, head[-1]["watermark"]
        # Every row of the page shares one watermark: take all rows that have it.
        return await conn.fetch(self._tie, last), last
