"""The offline store: an append-only, typed log per feature view version in Postgres.

Each version gets a table ``feature_store.log_<view>_v<version>`` with the entity
key, the event time (when the values were true), the created time (when they
became known) and one typed column per feature. Point-in-time joins read these.
Identifiers come only from validated definitions and are quoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from libs.db import quote_ident
from libs.db.locks import lock_name, xact_lock

SQL_TYPES = {
    m.VALUE_TYPE_BOOL: "boolean",
    m.VALUE_TYPE_INT64: "bigint",
    m.VALUE_TYPE_FLOAT64: "double precision",
    m.VALUE_TYPE_STRING: "text",
    m.VALUE_TYPE_TIMESTAMP: "timestamptz",
    m.VALUE_TYPE_INT64_LIST: "bigint[]",
    m.VALUE_TYPE_FLOAT64_LIST: "double precision[]",
    m.VALUE_TYPE_STRING_LIST: "text[]",
    m.VALUE_TYPE_BOOL_LIST: "boolean[]",
}
SCHEMA = "feature_store"


def log_table(view: str, version: int) -> str:
    """The (unquoted) table name of a view version's log."""
    return f"log_{view}_v{version}"


def qualified_log_table(view: str, version: int) -> str:
    return f"{quote_ident(SCHEMA)}.{quote_ident(log_table(view, version))}"


async def ensure_log_table(conn: asyncpg.Connection, view: m.FeatureView) -> None:
    """Create the view version's log, or add columns for features appended since."""
    table = qualified_log_table(view.name, view.version)
    # seq orders rows in commit order (appends to one view are serialized, see
    # lock_for_append), which lets readers mirror the log incrementally.
    await conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {table} (
                seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                entity_key   text        NOT NULL,
                event_time   timestamptz NOT NULL,
                created_time timestamptz NOT NULL)"""
    )
    for feature in view.features:
        await conn.execute(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {quote_ident(feature.name)} "
            f"{SQL_TYPES[feature.type]}"
        )
    index = quote_ident(f"{log_table(view.name, view.version)}_key_time")
    await conn.execute(
        f"CREATE INDEX IF NOT EXISTS {index} ON {table} (entity_key, event_time, created_time)"
    )


async def lock_for_append(conn: asyncpg.Connection, view: m.FeatureView) -> None:
    """Serialize appends to one view version until the caller's transaction ends.

    Then rows commit in ``seq`` order: a reader that has seen seq N has seen
    everything before it, so ``seq > N`` fetches exactly what is new.
    """
    await xact_lock(conn, lock_name("log", view.name, view.version))


async def append_rows(
    conn: asyncpg.Connection,
    view: m.FeatureView,
    rows: Sequence[tuple[str, datetime, datetime, Sequence[object]]],
) -> None:
    """Append (entity key, event time, created time, feature values) rows with COPY.

    Call ``lock_for_append`` first in the same transaction.
    """
    if not rows:
        return
    columns = ["entity_key", "event_time", "created_time", *(f.name for f in view.features)]
    await conn.copy_records_to_table(
        log_table(view.name, view.version),
        schema_name=SCHEMA,
        columns=columns,
        records=[(key, event, created, *values) for key, event, created, values in rows],
    )


async def written_rows(
    conn: asyncpg.Connection,
    view: m.FeatureView,
    identities: Sequence[tuple[str, datetime, datetime]],
) -> list[tuple[object, ...]]:
    """The log's rows with these (entity key, event time, created time): each as
    (entity key, event time, created time, *feature values), as often as it is logged."""
    if not identities:
        return []
    keys, events, created = zip(*set(identities), strict=True)
    features = "".join(f", l.{quote_ident(f.name)}" for f in view.features)
    records = await conn.fetch(
        f"""SELECT l.entity_key, l.event_time, l.created_time{features}
            FROM {qualified_log_table(view.name, view.version)} AS l
            JOIN unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS k(e, t, c)
              ON l.entity_key = k.e AND l.event_time = k.t AND l.created_time = k.c""",
        list(keys),
        list(events),
        list(created),
    )
    return [tuple(record) for record in records]
