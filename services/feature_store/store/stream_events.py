"""The raw-event log of stream sources and the count of rejected events, in Postgres.

The log keeps every business event that was a JSON object, exactly as published, with
its JetStream arrival time and stream sequence: backfills recompute tiles from it and
point-in-time aggregates read it as of each label's time. Its primary key (source,
event id) is also the last guard against applying one event twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from libs.db.locks import lock_name, xact_lock, xact_lock_sql
from libs.db.slices import DELETE_SLICE_ROWS, delete_in_slices
from services.feature_store.domain.streaming.events import RawEvent

_SOURCE_LOCK_SQL = "'lathe.stream.' || $1::text"
"""The name of a source's ingestion lock, as SQL (``lock_name("stream", source)``)."""

# The shared lock is taken by every ingestion transaction of a source before it touches
# the log or tiles; a backfill takes it exclusively, so it reads a log no ingestion is
# still adding to and replaces tiles no ingestion is merging into. $1: source; $2..$5:
# event ids, stream sequences, arrival times, payloads. Returns the ids that were new.
_APPEND = f"""
    INSERT INTO feature_store.stream_events
        (source, event_id, stream_sequence, arrival_time, payload)
    SELECT $1, e, s, a, p
    FROM (SELECT {xact_lock_sql(_SOURCE_LOCK_SQL, shared=True)}) AS locked,
         unnest($2::uuid[], $3::bigint[], $4::timestamptz[], $5::bytea[]) AS t(e, s, a, p)
    ON CONFLICT (source, event_id) DO NOTHING
    RETURNING event_id"""

_IMPORT = """
    INSERT INTO feature_store.stream_events
        (source, event_id, stream_sequence, arrival_time, payload)
    SELECT $1, e, s, a, p
    FROM unnest($2::uuid[], $3::bigint[], $4::timestamptz[], $5::bytea[]) AS t(e, s, a, p)
    ON CONFLICT (source, event_id) DO NOTHING"""

_REJECT = """
    INSERT INTO feature_store.stream_rejections AS r
        (source, view, version, reason, count, last_at)
    SELECT $1, v, n, reason, c, now()
    FROM unnest($2::text[], $3::int[], $4::text[], $5::bigint[]) AS t(v, n, reason, c)
    ON CONFLICT (source, view, version, reason)
    DO UPDATE SET count = r.count + EXCLUDED.count, last_at = EXCLUDED.last_at"""


async def append_events(
    conn: asyncpg.Connection, source: str, events: Sequence[RawEvent]
) -> set[UUID]:
    """Log events of one source (in the caller's transaction, holding the source's shared
    lock); the ids of those not logged before."""
    records = await conn.fetch(
        _APPEND,
        source,
        [e.event_id for e in events],
        [e.stream_sequence for e in events],
        [e.arrival_time for e in events],
        [e.payload for e in events],
    )
    return {r[0] for r in records}


async def import_events(conn: asyncpg.Connection, source: str, events: Sequence[RawEvent]) -> None:
    """Log historical events in bulk (events already logged are left as they are)."""
    if not events:
        return
    await conn.execute(
        _IMPORT,
        source,
        [e.event_id for e in events],
        [e.stream_sequence for e in events],
        [e.arrival_time for e in events],
        [e.payload for e in events],
    )


async def lock_source(conn: asyncpg.Connection, source: str, *, shared: bool = False) -> None:
    """Hold off ingestion of ``source`` until the caller's transaction ends (backfill);
    ``shared``: beside ingestion, excluding a backfill (folding lifetime rows)."""
    await xact_lock(conn, lock_name("stream", source), shared=shared)


async def read_events(
    conn: asyncpg.Connection,
    source: str,
    *,
    arrived_from: datetime | None = None,
    arrived_until: datetime | None = None,
    arrived_before: datetime | None = None,
    prefetch: int = 10_000,
) -> AsyncIterator[RawEvent]:
    """The source's logged events (optionally by arrival time: ``arrived_before``
    excludes its bound), streamed with a cursor.

    Needs a transaction on ``conn`` (cursors live in one).
    """
    query = """SELECT event_id, stream_sequence, arrival_time, payload
               FROM feature_store.stream_events
               WHERE source = $1
                 AND ($2::timestamptz IS NULL OR arrival_time >= $2)
                 AND ($3::timestamptz IS NULL OR arrival_time <= $3)
                 AND ($4::timestamptz IS NULL OR arrival_time < $4)"""
    async for record in conn.cursor(
        query, source, arrived_from, arrived_until, arrived_before, prefetch=prefetch
    ):
        yield RawEvent(record[0], record[1], record[2], record[3])


async def log_state(conn: asyncpg.Connection, source: str) -> tuple[str, int]:
    """(the snapshot of the caller's transaction as text, rows of ``source`` ever deleted).

    In a REPEATABLE READ transaction, call it first: every later read of the transaction
    sees exactly what this snapshot saw, so ``read_unseen_events(conn, source, snapshot)``
    in a later transaction returns the rows it could not see (ADR 0021's parsed-event cache).
    """
    record = await conn.fetchrow(
        """SELECT pg_current_snapshot()::text,
                  coalesce((SELECT deleted FROM feature_store.stream_event_deletions
                            WHERE source = $1), 0)""",
        source,
    )
    assert record is not None
    return record[0], record[1]


async def read_unseen_events(
    conn: asyncpg.Connection,
    source: str,
    snapshot: str,
    *,
    arrived_from: datetime | None = None,
    prefetch: int = 10_000,
) -> AsyncIterator[RawEvent]:
    """The source's events (arrived at or after ``arrived_from``, if given) that a
    transaction with ``snapshot`` (``log_state``) did not see: logged by a transaction
    that had not committed then. Streamed with a cursor (needs a transaction)."""
    query = """SELECT event_id, stream_sequence, arrival_time, payload
               FROM feature_store.stream_events
               WHERE source = $1
                 AND written_xid >= pg_snapshot_xmin($2::text::pg_snapshot)
                 AND NOT pg_visible_in_snapshot(written_xid, $2::text::pg_snapshot)
                 AND ($3::timestamptz IS NULL OR arrival_time >= $3)"""
    async for record in conn.cursor(query, source, snapshot, arrived_from, prefetch=prefetch):
        yield RawEvent(record[0], record[1], record[2], record[3])


async def count_rejections(
    conn: asyncpg.Connection, source: str, counts: Counter[tuple[str, int, str]]
) -> None:
    """Add (view, version, reason) counts for ``source`` in the caller's transaction."""
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(
        _REJECT,
        source,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [counts[k] for k in keys],
    )


async def rejections(
    executor: asyncpg.Pool | asyncpg.Connection, source: str
) -> dict[tuple[str, int, str], int]:
    """(view, version, reason) -> how many events of ``source`` were rejected for it."""
    records = await executor.fetch(
        """SELECT view, version, reason, count FROM feature_store.stream_rejections
           WHERE source = $1""",
        source,
    )
    return {(r[0], r[1], r[2]): r[3] for r in records}


# A loose index scan over the primary key: each distinct source without reading the log.
_SOURCES = """
    WITH RECURSIVE s(source) AS (
        SELECT min(source) FROM feature_store.stream_events
        UNION ALL
        SELECT (SELECT min(source) FROM feature_store.stream_events WHERE source > s.source)
        FROM s WHERE s.source IS NOT NULL)
    SELECT source FROM s WHERE source IS NOT NULL"""

_PRUNE = """
    DELETE FROM feature_store.stream_events WHERE (source, event_id) IN (
        SELECT source, event_id FROM feature_store.stream_events
        WHERE source = $1 AND arrival_time < $2 LIMIT $3)"""


async def prune_events(
    executor: asyncpg.Pool | asyncpg.Connection,
    before: datetime,
    *,
    slice_rows: int = DELETE_SLICE_ROWS,
) -> int:
    """Delete every source's events that arrived before ``before``, in bounded slices."""
    deleted = 0
    for record in await executor.fetch(_SOURCES):
        deleted += await delete_in_slices(
            executor, _PRUNE, record[0], before, slice_rows=slice_rows
        )
    return deleted
