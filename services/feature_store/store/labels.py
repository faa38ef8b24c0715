"""Labels read from a Postgres table (GetHistoricalFeatures' ``label_source``).

The rows come back typed by their columns' Postgres types (bigint as int64, text as
string with '' and 'true' kept, double precision with NaN and infinities, timestamptz
as timestamp[us, UTC], numeric(p, s) as decimal128(p, s), ...), in a deterministic
order (by time, key, then each column), so the same table gives the same training set
and snapshot id however Postgres stores it. The entity column is returned under the join
key's name with its own type (the join reads it as text); with several join keys (a
composite key, or views of several entities) each key's column is, under its join key's
name (``entity_columns``, ADR 0023). Identifiers are checked as names and quoted; time
bounds travel as bind parameters. (It used to go through CSV and DuckDB's type
inference: a bigint key came back as text, '' as null, 'true' as a bool.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import pyarrow as pa

from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db import quote_ident
from libs.errors import InvalidArgument
from services.feature_store.domain.names import check_name
from services.feature_store.domain.times import MAX_TIME, MIN_TIME, utc

_BATCH = 50_000


@dataclass(frozen=True)
class _Type:
    arrow: pa.DataType
    text: bool = False
    """Read as ``::text`` (uuid, json: their text is the value); ordered by its bytes."""
    instant: bool = False
    """A timestamptz: each value through ``utc`` (asyncpg's ±infinity)."""


_TYPES = {
    "int2": _Type(pa.int16()),
    "int4": _Type(pa.int32()),
    "int8": _Type(pa.int64()),
    "float4": _Type(pa.float32()),
    "float8": _Type(pa.float64()),
    "bool": _Type(pa.bool_()),
    "text": _Type(pa.string(), text=True),
    "varchar": _Type(pa.string(), text=True),
    "bpchar": _Type(pa.string(), text=True),
    "name": _Type(pa.string(), text=True),
    "uuid": _Type(pa.string(), text=True),
    "json": _Type(pa.string(), text=True),
    "jsonb": _Type(pa.string(), text=True),
    "date": _Type(pa.date32()),
    "timestamp": _Type(pa.timestamp("us")),
    "timestamptz": _Type(pa.timestamp("us", tz="UTC"), instant=True),
}
_KEY_TYPES = {"int2", "int4", "int8", "text", "varchar", "bpchar", "name", "uuid"}
_TIME_TYPES = {"timestamptz", "timestamp"}
_COLUMNS = """
    SELECT a.attname AS name, t.typname AS type, format_type(a.atttypid, a.atttypmod) AS shown,
           information_schema._pg_numeric_precision(a.atttypid, a.atttypmod) AS precision,
           information_schema._pg_numeric_scale(a.atttypid, a.atttypmod) AS scale
    FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
    WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped"""


def _table_name(source: rr.LabelSource) -> str:
    parts = source.table.split(".")
    if len(parts) > 2:
        raise InvalidArgument("label_source.table must be 'table' or 'schema.table'")
    return ".".join(quote_ident(check_name(p, "label_source.table")) for p in parts)


def key_columns(source: rr.LabelSource, join_keys: Sequence[str]) -> dict[str, str]:
    """Join key -> the label table's column holding it: ``entity_column`` for a selection
    of one join key, else ``entity_columns`` (a key left out: the column of its name);
    InvalidArgument naming a join key the selection does not have."""
    if source.entity_column and source.entity_columns:
        raise InvalidArgument("set label_source.entity_column or entity_columns, not both")
    if source.entity_column:
        if len(join_keys) != 1:
            raise InvalidArgument(
                f"the selection's entities have the join keys {list(join_keys)}: name the "
                "column of each in label_source.entity_columns (join key -> column)"
            )
        return {join_keys[0]: check_name(source.entity_column, "label_source.entity_column")}
    extra = sorted(set(source.entity_columns) - set(join_keys))
    if extra:
        raise InvalidArgument(
            f"label_source.entity_columns names {extra[0]!r}, which is not a join key of the "
            f"selection (its keys are {list(join_keys)})"
        )
    return {
        key: check_name(source.entity_columns.get(key, key), "label_source.entity_columns")
        for key in join_keys
    }


async def read_label_table(
    pool: asyncpg.Pool, source: rr.LabelSource, join_keys: Sequence[str]
) -> pa.Table:
    """The label table's rows: each join key (its column, its own type, ``key_columns``),
    ``event_time`` (timestamp[us, UTC]) and the extra columns, typed; InvalidArgument
    when the table cannot be read as described."""
    table = _table_name(source)
    keys = key_columns(source, join_keys)
    time_column = check_name(source.event_time_column, "label_source.event_time_column")
    extras = [check_name(c, "label_source.columns") for c in source.columns]
    names = [*keys, "event_time", *extras]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise InvalidArgument(
            f"label_source.columns names {duplicate!r} twice (entity columns are returned "
            f"as their join keys {list(keys)}, the time as 'event_time')"
        )
    async with pool.acquire() as conn:
        try:
            found = {r["name"]: r for r in await conn.fetch(_COLUMNS, table)}
        except asyncpg.PostgresError as exc:
            raise InvalidArgument(f"cannot read label_source {source.table!r}: {exc}") from exc
        key_field = f"label_source.entity_column{'' if source.entity_column else 's'}"
        types = [
            *(_column_type(found, c, key_field, _KEY_TYPES) for c in keys.values()),
            _column_type(found, time_column, "label_source.event_time_column", _TIME_TYPES),
            *(_column_type(found, c, "label_source.columns", None) for c in extras),
        ]
        query = _query(table, [*keys.values(), time_column, *extras], types, len(keys))
        bounds = [_bound(source, "start_time"), _bound(source, "end_time")]
        try:
            async with conn.transaction(readonly=True):
                batches = []
                cursor = await conn.cursor(query, *bounds)
                while records := await cursor.fetch(_BATCH):
                    batches.append(_batch(records, names, types))
        except (asyncpg.PostgresError, OverflowError, ValueError) as exc:
            raise InvalidArgument(f"cannot read label_source {source.table!r}: {exc}") from exc
    schema = pa.schema([(n, t.arrow) for n, t in zip(names, types, strict=True)])
    rows = pa.Table.from_batches(batches, schema=schema)
    event_time = rows.column("event_time").cast(pa.timestamp("us", tz="UTC"))
    return rows.set_column(len(keys), "event_time", event_time)


def _column_type(
    found: dict[str, asyncpg.Record], name: str, field: str, allowed: set[str] | None
) -> _Type:
    column = found.get(name)
    if column is None:
        raise InvalidArgument(f"{field}: the label table has no column {name!r}")
    kind = column["type"]
    if kind == "numeric" and allowed is None and column["precision"] is not None:
        return _Type(pa.decimal128(column["precision"], column["scale"]))
    if kind not in _TYPES or (allowed is not None and kind not in allowed):
        raise InvalidArgument(
            f"{field}: column {name!r} is {column['shown']}, which training sets do not "
            "read; cast it in a view (numbers, text, boolean, date, timestamp; numeric "
            "with a precision)"
        )
    return _TYPES[kind]


def _query(table: str, columns: list[str], types: list[_Type], keys: int) -> str:
    """Each column (text forms where needed; ``keys`` key columns, then the time, then
    the rest), in a deterministic order: time, keys, the rest (text by its bytes, not the
    database's collation)."""
    time_column = quote_ident(columns[keys])
    selected, order = [], []
    for index, (column, kind) in enumerate(zip(columns, types, strict=True)):
        cast = "::text" if kind.text else ""
        selected.append(f"{quote_ident(column)}{cast} AS c{index}")
        order.append(f'c{index} COLLATE "C"' if kind.text else f"c{index}")
    order.insert(0, order.pop(keys))
    return (
        f"SELECT * FROM (SELECT {', '.join(selected)} FROM {table} "
        f"WHERE ($1::timestamptz IS NULL OR {time_column} >= $1) "
        f"AND ($2::timestamptz IS NULL OR {time_column} < $2)) AS labels "
        f"ORDER BY {', '.join(order)}"
    )


def _bound(source: rr.LabelSource, field: str) -> datetime | None:
    if not source.HasField(field):
        return None
    try:
        moment = utc(getattr(source, field).ToDatetime())
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(f"label_source.{field} is not a valid timestamp: {exc}") from exc
    return min(max(moment, MIN_TIME), MAX_TIME)


def _batch(
    records: Sequence[asyncpg.Record], names: list[str], types: list[_Type]
) -> pa.RecordBatch:
    columns = list(zip(*records, strict=True))
    arrays = []
    for values, kind in zip(columns, types, strict=True):
        if kind.instant:
            values = tuple(None if v is None else utc(v) for v in values)
        arrays.append(pa.array(values, kind.arrow))
    return pa.RecordBatch.from_arrays(arrays, names=names)
