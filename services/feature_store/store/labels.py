"""Labels read from a Postgres table (GetHistoricalFeatures' ``label_source``).

The table is exported with COPY to a CSV file and read back through the offline mirror's
DuckDB, which types the join key as text and the event time as a naive UTC timestamp
(what the point-in-time join works in). Identifiers are checked as names and quoted;
the time bounds are formatted from protobuf Timestamps.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC

import asyncpg
import pyarrow as pa

from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db import quote_ident
from libs.errors import InvalidArgument
from services.feature_store.domain.names import check_name
from services.feature_store.store.offline_mirror import OfflineMirror


def _query(source: rr.LabelSource, join_key: str) -> str:
    parts = source.table.split(".")
    if len(parts) > 2:
        raise InvalidArgument("label_source.table must be 'table' or 'schema.table'")
    table = ".".join(quote_ident(check_name(p, "label_source.table")) for p in parts)
    entity = quote_ident(check_name(source.entity_column, "label_source.entity_column"))
    time_column = quote_ident(
        check_name(source.event_time_column, "label_source.event_time_column")
    )
    extras = [check_name(c, "label_source.columns") for c in source.columns]
    where = []
    for bound, operator in ((source.start_time, ">="), (source.end_time, "<")):
        if bound.seconds or bound.nanos:
            moment = bound.ToDatetime(tzinfo=UTC).isoformat()  # formatted from a Timestamp
            where.append(f"{time_column} {operator} '{moment}'::timestamptz")
    return (
        f"SELECT {entity}::text AS {quote_ident(join_key)}, "
        f"{time_column} AT TIME ZONE 'UTC' AS event_time"
        + "".join(f", {quote_ident(c)}" for c in extras)
        + f" FROM {table}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
    )


async def read_label_table(
    pool: asyncpg.Pool, mirror: OfflineMirror, source: rr.LabelSource, join_key: str
) -> pa.Table:
    """The label table's rows: ``join_key`` (text), ``event_time`` and the extra columns;
    InvalidArgument when the table cannot be read as described."""
    query = _query(source, join_key)
    with tempfile.NamedTemporaryFile(suffix=".csv") as handle:
        try:
            async with pool.acquire() as conn:
                await conn.copy_from_query(query, output=handle.name, format="csv", header=True)
        except asyncpg.PostgresError as exc:
            raise InvalidArgument(f"cannot read label_source {source.table!r}: {exc}") from exc
        return await asyncio.to_thread(mirror.read_labels_csv, handle.name, join_key)
