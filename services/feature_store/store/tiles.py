"""Tiles of stream views in Postgres: lock-and-read to merge, write back, read windows.

States are stored as the JSON of ``aggregation.encode_state``; this module moves them
and never interprets them. Tile starts are timestamptz, in µs since the epoch above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg

from libs.db import delete_in_slices
from services.feature_store.app.aggregation import EMPTY_STATE, from_us, to_us

TileRef = tuple[str, int, str, int]
"""(view, version, entity key, tile start µs)."""

# Makes sure each tile of a batch of just-logged events exists and locks it until the
# transaction ends, returning its latest committed state: the no-op DO UPDATE locks the
# row as SELECT ... FOR UPDATE would and, unlike a SELECT, also sees a row another
# transaction inserted and committed after this statement's snapshot (two replicas
# creating one tile cannot lose an update). Rows are locked in the order given.
_LOCK = """
    INSERT INTO feature_store.stream_tiles AS t (view, version, entity_key, tile_start, state)
    SELECT k.view, k.version, k.entity_key, k.tile_start, $5::jsonb
    FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[])
         WITH ORDINALITY AS k(view, version, entity_key, tile_start, n)
    ORDER BY k.n
    ON CONFLICT (view, version, entity_key, tile_start) DO UPDATE SET state = t.state
    RETURNING t.view, t.version, t.entity_key, t.tile_start, t.state::text"""

# One row per statement (pipelined by executemany): an UPDATE ... FROM unnest(...) of the
# same rows measured ~1.8x slower per event.
_WRITE = """
    UPDATE feature_store.stream_tiles SET state = $5::jsonb
    WHERE view = $1 AND version = $2 AND entity_key = $3 AND tile_start = $4"""

_READ_WINDOWS = """
    SELECT t.view, t.version, t.entity_key, t.tile_start, t.state::text
    FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[])
         AS k(view, version, entity_key, since, until)
    JOIN feature_store.stream_tiles t
      ON t.view = k.view AND t.version = k.version AND t.entity_key = k.entity_key
     AND t.tile_start BETWEEN k.since AND k.until"""

_COLUMNS = ["view", "version", "entity_key", "tile_start", "state"]


def _columns(refs: Sequence[TileRef]) -> tuple[list[str], list[int], list[str], list[datetime]]:
    return (
        [r[0] for r in refs],
        [r[1] for r in refs],
        [r[2] for r in refs],
        [from_us(r[3]) for r in refs],
    )


def _ref(record: asyncpg.Record) -> TileRef:
    return record[0], record[1], record[2], to_us(record[3])


async def lock_tiles(conn: asyncpg.Connection, refs: Sequence[TileRef]) -> dict[TileRef, str]:
    """Lock ``refs`` (sorted, distinct; created empty if missing) until the transaction
    ends; their latest committed states."""
    if not refs:
        return {}
    records = await conn.fetch(_LOCK, *_columns(refs), EMPTY_STATE)
    return {_ref(r): r[4] for r in records}


async def write_tiles(conn: asyncpg.Connection, states: Mapping[TileRef, str]) -> None:
    """Store merged states of tiles locked with ``lock_tiles`` in this transaction."""
    if not states:
        return
    await conn.executemany(
        _WRITE,
        [
            (view, version, key, from_us(start), state)
            for (view, version, key, start), state in states.items()
        ],
    )


async def read_windows(
    executor: asyncpg.Pool | asyncpg.Connection,
    wanted: Sequence[tuple[str, int, str, int, int]],
) -> list[tuple[TileRef, str]]:
    """Tiles of (view, version, entity key, first start µs, last start µs), in one query."""
    if not wanted:
        return []
    records = await executor.fetch(
        _READ_WINDOWS,
        [w[0] for w in wanted],
        [w[1] for w in wanted],
        [w[2] for w in wanted],
        [from_us(w[3]) for w in wanted],
        [from_us(w[4]) for w in wanted],
    )
    return [(_ref(r), r[4]) for r in records]


async def replace_tiles(
    conn: asyncpg.Connection, view: str, version: int, states: Mapping[tuple[str, int], str]
) -> None:
    """Replace every tile of a view version with ``states`` ((entity, start µs) -> state)."""
    await conn.execute(
        "DELETE FROM feature_store.stream_tiles WHERE view = $1 AND version = $2", view, version
    )
    await conn.copy_records_to_table(
        "stream_tiles",
        schema_name="feature_store",
        columns=_COLUMNS,
        records=[
            (view, version, entity, from_us(start), state)
            for (entity, start), state in states.items()
        ],
    )


async def all_tiles(
    executor: asyncpg.Pool | asyncpg.Connection, view: str, version: int
) -> dict[tuple[str, int], str]:
    """Every tile of a view version: (entity, start µs) -> state (backfill checks, tests)."""
    records = await executor.fetch(
        """SELECT entity_key, tile_start, state::text FROM feature_store.stream_tiles
           WHERE view = $1 AND version = $2""",
        view,
        version,
    )
    return {(r[0], to_us(r[1])): r[2] for r in records}


_PRUNE = """
    DELETE FROM feature_store.stream_tiles WHERE (view, version, entity_key, tile_start) IN (
        SELECT view, version, entity_key, tile_start FROM feature_store.stream_tiles
        WHERE view = $1 AND version = $2 AND tile_start < $3 LIMIT $4)"""


async def prune_tiles(
    executor: asyncpg.Pool | asyncpg.Connection, view: str, version: int, before_us: int
) -> int:
    """Delete a view version's tiles starting before ``before_us``, in bounded slices."""
    return await delete_in_slices(executor, _PRUNE, view, version, from_us(before_us))
