"""The online store: the latest FeatureRow per (view, version, entity) in Postgres.

``online_values`` holds each entity's latest row already true when it was written;
``online_pending`` holds rows whose event time was still ahead then, one per event time
(ADR 0019). A read at time t answers the latest of both with ``event_time <= t``.
Serving replicas keep a copy in memory (app/online/replica.py) and follow both tables
through ``read_changes``: each upsert records the writing transaction's id and NOTIFYs
``CHANGES_CHANNEL`` when it commits. ``promote_due`` moves pending rows whose time has
come into ``online_values`` by the same latest-wins rule.

Times come back through ``domain.times.utc`` (asyncpg decodes the first and last
instants, stored as ``±infinity``, as naive datetimes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.feature_store.domain.times import utc

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

_UPSERT_PENDING = """
    INSERT INTO feature_store.online_pending
        (view, version, entity_key, event_time, created_time, row, features)
    SELECT $1, $2, k, e, c, r, n FROM unnest($3::text[], $4::bytea[], $5::timestamptz[],
                                               $6::timestamptz[], $7::int[]) AS t(k, r, e, c, n)
    ON CONFLICT (view, version, entity_key, event_time) DO UPDATE SET
        row = EXCLUDED.row, created_time = EXCLUDED.created_time,
        features = EXCLUDED.features, changed_by = pg_current_xact_id()
    WHERE online_pending.created_time <= EXCLUDED.created_time"""

# Every (view, entity) pair of a request in one index scan per table; a view's other
# versions that the arrays also match are dropped by the caller.
_READ = """
    SELECT view, version, entity_key, row, event_time, created_time, features
    FROM feature_store.online_values
    WHERE view = ANY($1::text[]) AND version = ANY($2::int[]) AND entity_key = ANY($3::text[])
    UNION ALL
    SELECT view, version, entity_key, row, event_time, created_time, features
    FROM feature_store.online_pending
    WHERE view = ANY($1::text[]) AND version = ANY($2::int[]) AND entity_key = ANY($3::text[])"""

# Each entity's row true at $3: the latest of its current row and its pending rows due.
_VIEW_ROWS = """
    SELECT DISTINCT ON (entity_key) row FROM (
        SELECT entity_key, row, event_time, created_time FROM feature_store.online_values
        WHERE view = $1 AND version = $2
        UNION ALL
        SELECT entity_key, row, event_time, created_time FROM feature_store.online_pending
        WHERE view = $1 AND version = $2 AND event_time <= $3) AS rows
    ORDER BY entity_key, event_time DESC, created_time DESC"""

# Pending rows whose time has come, a slice at a time (SKIP LOCKED: promoters on several
# replicas share the work), moved into online_values by the upsert's latest-wins rule.
_PROMOTE = """
    WITH due AS (
        DELETE FROM feature_store.online_pending
        WHERE (view, version, entity_key, event_time) IN (
            SELECT view, version, entity_key, event_time FROM feature_store.online_pending
            WHERE event_time <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
        RETURNING view, version, entity_key, row, event_time, created_time, features),
    latest AS (
        SELECT DISTINCT ON (view, version, entity_key) * FROM due
        ORDER BY view, version, entity_key, event_time DESC, created_time DESC),
    moved AS (
        INSERT INTO feature_store.online_values
            (view, version, entity_key, row, event_time, created_time, features)
        SELECT view, version, entity_key, row, event_time, created_time, features FROM latest
        ON CONFLICT (view, version, entity_key) DO UPDATE SET
            row = EXCLUDED.row, event_time = EXCLUDED.event_time,
            created_time = EXCLUDED.created_time, features = EXCLUDED.features,
            changed_by = pg_current_xact_id()
        WHERE (online_values.event_time, online_values.created_time)
              <= (EXCLUDED.event_time, EXCLUDED.created_time)
        RETURNING 1)
    SELECT (SELECT count(*) FROM due) AS due, (SELECT count(*) FROM moved) AS moved"""

CHANGES_CHANNEL = "lathe_feature_store_online"
"""NOTIFYed (empty payload, so Postgres folds a transaction's notifications into one)."""

# xid8 travels as text: asyncpg has no codec for it.
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_CHANGED = """
    SELECT view, version, entity_key, row, event_time, created_time, features
    FROM feature_store.online_values WHERE changed_by >= $1::text::xid8
    UNION ALL
    SELECT view, version, entity_key, row, event_time, created_time, features
    FROM feature_store.online_pending WHERE changed_by >= $1::text::xid8"""


@dataclass(frozen=True)
class OnlineRow:
    row: bytes
    """A FeatureRow protobuf."""
    event_time: datetime
    created_time: datetime
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


async def upsert_pending(
    conn: asyncpg.Connection,
    view: str,
    version: int,
    rows: Sequence[tuple[str, bytes, datetime, datetime, int]],
) -> None:
    """Keep rows of the future beside the current ones: per (entity, event time), the one
    known last. Rows as for ``upsert_latest``, pre-reduced per (entity, event time)."""
    if not rows:
        return
    keys, payloads, events, created, counts = zip(*rows, strict=True)
    await conn.execute(
        _UPSERT_PENDING,
        view,
        version,
        list(keys),
        list(payloads),
        list(events),
        list(created),
        list(counts),
    )
    await conn.execute("SELECT pg_notify($1, '')", CHANGES_CHANNEL)


async def promote_due(conn: asyncpg.Connection, now: datetime, *, batch: int = 5000) -> int:
    """Move pending rows with ``event_time <= now`` into ``online_values`` (each entity's
    latest wins, as an upsert does) and delete them, a slice per transaction; how many
    left the pending table. Replicas need not hear of the deletes: they fold due rows
    into the entity's current row themselves."""
    total = 0
    while True:
        async with conn.transaction():
            due = await conn.fetchval(_PROMOTE, now, batch)
            if due:
                await conn.execute("SELECT pg_notify($1, '')", CHANGES_CHANNEL)
        total += due
        if due < batch:
            return total


async def read_latest(
    executor: asyncpg.Pool | asyncpg.Connection,
    views: Sequence[tuple[str, int]],
    keys: Sequence[str],
) -> dict[tuple[str, int], dict[str, list[OnlineRow]]]:
    """Every stored row (the current one and those of the future) of every (view,
    version) for every entity key, in one query."""
    if not views or not keys:
        return {}
    found: dict[tuple[str, int], dict[str, list[OnlineRow]]] = {view: {} for view in views}
    records = await executor.fetch(
        _READ,
        list(dict.fromkeys(v for v, _ in views)),
        list(dict.fromkeys(n for _, n in views)),
        list(dict.fromkeys(keys)),
    )
    for view, version, key, row, event_time, created_time, features in records:
        table = found.get((view, version))
        if table is not None:  # not another version the arrays also matched
            table.setdefault(key, []).append(
                OnlineRow(row, utc(event_time), utc(created_time), features)
            )
    return found


async def view_rows(
    executor: asyncpg.Pool | asyncpg.Connection, view: str, version: int, at: datetime
) -> list[bytes]:
    """Every entity's FeatureRow of one view version true at ``at`` (statistics)."""
    return [record["row"] for record in await executor.fetch(_VIEW_ROWS, view, version, at)]


async def read_changes(
    conn: asyncpg.Connection,
    since: int,
    apply: Callable[[Sequence[asyncpg.Record]], None],
    *,
    batch: int = 500,
) -> int:
    """Hand rows changed by transactions ``>= since`` (0: every row) to ``apply``, in
    batches of (view, version, entity_key, row, event_time, created_time, features),
    current rows and rows of the future alike; return the next ``since``.

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
