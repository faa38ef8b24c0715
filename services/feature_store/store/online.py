"""The online store: the latest FeatureRow per (view, version, entity) in Postgres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_UPSERT = """
    INSERT INTO feature_store.online_values
        (view, version, entity_key, row, event_time, created_time)
    SELECT $1, $2, k, r, e, c FROM unnest($3::text[], $4::bytea[], $5::timestamptz[],
                                            $6::timestamptz[]) AS t(k, r, e, c)
    ON CONFLICT (view, version, entity_key) DO UPDATE SET
        row = EXCLUDED.row, event_time = EXCLUDED.event_time,
        created_time = EXCLUDED.created_time
    WHERE (online_values.event_time, online_values.created_time)
          <= (EXCLUDED.event_time, EXCLUDED.created_time)"""

_READ = """
    SELECT o.view, o.version, o.entity_key, o.row, o.event_time
    FROM unnest($1::text[], $2::int[], $3::text[]) AS k(view, version, entity_key)
    JOIN feature_store.online_values o
      ON o.view = k.view AND o.version = k.version AND o.entity_key = k.entity_key"""


@dataclass(frozen=True)
class OnlineRow:
    row: bytes
    event_time: datetime


async def upsert_latest(
    conn: asyncpg.Connection,
    view: str,
    version: int,
    rows: Sequence[tuple[str, bytes, datetime, datetime]],
) -> None:
    """Keep, per entity, the row with the latest (event time, created time).

    Rows for one entity must be pre-reduced to the latest (one statement cannot
    update a row twice).
    """
    if not rows:
        return
    keys, payloads, events, created = zip(*rows, strict=True)
    await conn.execute(
        _UPSERT, view, version, list(keys), list(payloads), list(events), list(created)
    )


async def read_rows(
    executor: asyncpg.Pool | asyncpg.Connection, wanted: Sequence[tuple[str, int, str]]
) -> dict[tuple[str, int, str], OnlineRow]:
    """The stored rows for (view, version, entity key) triples, in one query."""
    if not wanted:
        return {}
    views, versions, keys = zip(*wanted, strict=True)
    records = await executor.fetch(_READ, list(views), list(versions), list(keys))
    return {
        (r["view"], r["version"], r["entity_key"]): OnlineRow(r["row"], r["event_time"])
        for r in records
    }
