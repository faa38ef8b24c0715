"""The online store: the latest FeatureRow per (view, version, entity) in Postgres.

Serving replicas keep a copy in memory (app/online/replica.py) and follow it through
``read_changes``: each upsert records the writing transaction's id and NOTIFYs
``CHANGES_CHANNEL`` when it commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        created_time = EXCLUDED.created_time, features = EXCLUDED.features,
        changed_by = pg_current_xact_id()
    WHERE (online_values.event_time, online_values.created_time)
          <= (EXCLUDED.event_time, EXCLUDED.created_time)"""

# Every (view, entity) pair of a request in one index scan; a view's other versions
# that the arrays also match are dropped by the caller.
_READ = """
    SELECT view, version, entity_key, row, event_time, features
    FROM feature_store.online_values
    WHERE view = ANY($1::text[]) AND version = ANY($2::int[]) AND entity_key = ANY($3::text[])"""

_VIEW_ROWS = "SELECT row FROM feature_store.online_values WHERE view = $1 AND version = $2"

CHANGES_CHANNEL = "lathe_feature_store_online"
"""NOTIFYed (empty payload, so Postgres folds a transaction's notifications into one)."""

# xid8 travels as text: asyncpg has no codec for it.
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_CHANGED = """
    SELECT view, version, entity_key, row, event_time, features
    FROM feature_store.online_values WHERE changed_by >= $1::text::xid8"""


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
    await conn.execute("SELECT pg_notify($1, '')", CHANGES_CHANNEL)


async def read_latest(
    executor: asyncpg.Pool | asyncpg.Connection,
    views: Sequence[tuple[str, int]],
    keys: Sequence[str],
) -> dict[tuple[str, int], dict[str, OnlineRow]]:
    """The stored rows of every (view, version) for every entity key, in one query."""
    if not views or not keys:
        return {}
    found: dict[tuple[str, int], dict[str, OnlineRow]] = {view: {} for view in views}
    records = await executor.fetch(
        _READ,
        list(dict.fromkeys(v for v, _ in views)),
        list(dict.fromkeys(n for _, n in views)),
        list(dict.fromkeys(keys)),
    )
    for view, version, key, row, event_time, features in records:
        table = found.get((view, version))
        if table is not None:  # not another version the arrays also matched
            table[key] = OnlineRow(row, event_time, features)
    return found


async def view_rows(
    executor: asyncpg.Pool | asyncpg.Connection, view: str, version: int
) -> list[bytes]:
    """Every entity's stored FeatureRow of one view version (statistics)."""
    return [record["row"] for record in await executor.fetch(_VIEW_ROWS, view, version)]


async def read_changes(
    conn: asyncpg.Connection,
    since: int,
    apply: Callable[[Sequence[asyncpg.Record]], None],
    *,
    batch: int = 500,
) -> int:
    """Hand rows changed by transactions ``>= since`` (0: every row) to ``apply``, in
    batches of (view, version, entity_key, row, event_time, features); return the next
    ``since``.

    Rows and horizon come from one snapshot, so a transaction still running now is at
    or above the horizon and its rows come back in a later call. A row may come back
    again later; each time with its current value.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        horizon = await conn.fetchval(_HORIZON)
        cursor = await conn.cursor(_CHANGED, str(since))
        while rows := await cursor.fetch(batch):
            apply(rows)
    return int(horizon)
