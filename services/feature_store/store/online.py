"""The online store: the latest FeatureRow per (view, version, entity) in Postgres."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_UPSERT = """
    INSERT INTO feature_store.online_values
        (view, version, entity_key, row, event_time, created_time, features)
    SELECT $1, $2, k, r, e, c, n FROM unnest($3::text[], $4::bytea[], $5::timestamptz[],
                                               $6::timestamptz[], $7::int[]) AS t(k, r, e, c, n)
    ON CONFLICT (view, version, entity_key) DO UPDATE SET
        row = EXCLUDED.row, event_time = EXCLUDED.event_time,
        created_time = EXCLUDED.created_time, features = EXCLUDED.features
    WHERE (online_values.event_time, online_values.created_time)
          <= (EXCLUDED.event_time, EXCLUDED.created_time)"""

# Every (view, entity) pair of a request in one index scan; a view's other versions
# that the arrays also match are dropped by the caller.
_READ = """
    SELECT view, version, entity_key, row, event_time, features
    FROM feature_store.online_values
    WHERE view = ANY($1::text[]) AND version = ANY($2::int[]) AND entity_key = ANY($3::text[])"""


@dataclass(frozen=True)
class OnlineRow:
    row: bytes
    """A FeatureRow protobuf."""
    event_time: datetime
    features: int = 0
    """How many values ``row`` holds (0: not recorded)."""


async def upsert_latest(
    conn: asyncpg.Connection,
    view: str,
    version: int,
    rows: Sequence[tuple[str, bytes, datetime, datetime, int]],
) -> None:
    """Keep, per entity, the row with the latest (event time, created time).

    Rows are (entity key, FeatureRow bytes, event time, created time, value count).

    Rows for one entity must be pre-reduced to the latest (one statement cannot
    update a row twice).
    """
    if not rows:
        return
    keys, payloads, events, created, counts = zip(*rows, strict=True)
    await conn.execute(
        _UPSERT,
        view,
        version,
        list(keys),
        list(payloads),
        list(events),
        list(created),
        list(counts),
    )


async def read_latest(
    executor: asyncpg.Pool | asyncpg.Connection,
    views: Sequence[tuple[str, int]],
    keys: Sequence[str],
) -> dict[tuple[str, int, str], OnlineRow]:
    """The stored rows of every (view, version) for every entity key, in one query."""
    if not views or not keys:
        return {}
    wanted = set(views)
    records = await executor.fetch(
        _READ,
        list(dict.fromkeys(v for v, _ in views)),
        list(dict.fromkeys(n for _, n in views)),
        list(dict.fromkeys(keys)),
    )
    return {
        (r["view"], r["version"], r["entity_key"]): OnlineRow(
            r["row"], r["event_time"], r["features"]
        )
        for r in records
        if (r["view"], r["version"]) in wanted
    }
