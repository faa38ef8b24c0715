"""Columnar copies of the offline logs in DuckDB, kept up to date incrementally.

Postgres stays the source of truth. Before a point-in-time join, each log the
join reads is brought up to date by copying only the rows whose ``seq`` is past
what the mirror has (appends to a view commit in seq order, so that is exact),
and the join then runs in DuckDB's columnar engine instead of as millions of
Postgres index probes. Each changed log's timeline (store/pit_join.py) is rebuilt
right after the copy, so training-set queries only join. The mirror lives in the
feature-store process; a fresh process rebuilds it on first use.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import asyncpg
import duckdb

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.store.offline import log_table, qualified_log_table
from services.feature_store.store.pit_join import q, timeline_sql

DUCK_TYPES = {
    m.VALUE_TYPE_BOOL: "BOOLEAN",
    m.VALUE_TYPE_INT64: "BIGINT",
    m.VALUE_TYPE_FLOAT64: "DOUBLE",
    m.VALUE_TYPE_STRING: "VARCHAR",
    m.VALUE_TYPE_TIMESTAMP: "TIMESTAMP",
}


class OfflineMirror:
    def __init__(self, pool: asyncpg.Pool, *, scratch: Path | None = None) -> None:
        self._pool = pool
        self._scratch = scratch
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        self.db = duckdb.connect(":memory:")
        self.db.execute("SET TimeZone = 'UTC'")
        self._seen: dict[str, int] = {}
        self._columns: dict[str, tuple[str, ...]] = {}
        self._lock = asyncio.Lock()

    async def sync(self, view: m.FeatureView) -> str:
        """Bring the view version's mirror and timeline up to date; returns the timeline's
        DuckDB table name."""
        table = log_table(view.name, view.version)
        timeline = f"{table}_timeline"
        async with self._lock:
            columns = {f.name: DUCK_TYPES[f.type] for f in view.features}
            changed = self._columns.get(table) != tuple(columns)  # new, or features appended
            if changed:
                await asyncio.to_thread(self._create, table, columns)
                self._seen[table] = 0
                self._columns[table] = tuple(columns)
            last = self._seen.get(table, 0)
            with tempfile.TemporaryDirectory(dir=self._scratch) as directory:
                path = Path(directory) / "rows.csv"
                copied = await self._export(view, last, path)
                if copied:
                    self._seen[table] = await asyncio.to_thread(self._load, table, columns, path)
            if changed or copied:
                await asyncio.to_thread(self._build_timeline, timeline, table, tuple(columns))
        return timeline

    async def _export(self, view: m.FeatureView, after: int, path: Path) -> int:
        """COPY the rows past ``after`` to a CSV file; returns how many."""
        features = "".join(
            f", {q(f.name)} AT TIME ZONE 'UTC'"
            if f.type == m.VALUE_TYPE_TIMESTAMP
            else f", {q(f.name)}"
            for f in view.features
        )
        # Timestamps leave as UTC wall-clock time, so no session time zone is involved;
        # every non-null value is quoted, so an unquoted empty field is a NULL.
        query = (
            f"SELECT seq, entity_key, event_time AT TIME ZONE 'UTC', "
            f"created_time AT TIME ZONE 'UTC'{features} "
            f"FROM {qualified_log_table(view.name, view.version)} "
            f"WHERE seq > {int(after)} ORDER BY seq"
        )
        async with self._pool.acquire() as conn:
            status = await conn.copy_from_query(
                query, output=str(path), format="csv", force_quote=True
            )
        return int(status.split()[-1])

    def _create(self, table: str, columns: dict[str, str]) -> None:
        feature_columns = "".join(f", {q(name)} {kind}" for name, kind in columns.items())
        self.db.execute(
            f"CREATE OR REPLACE TABLE {q(table)} (seq BIGINT, entity_key VARCHAR, "
            f"event_time TIMESTAMP, created_time TIMESTAMP{feature_columns})"
        )

    def _build_timeline(self, timeline: str, table: str, features: tuple[str, ...]) -> None:
        self.db.execute(f"CREATE OR REPLACE TABLE {q(timeline)} AS {timeline_sql(table, features)}")

    def _load(self, table: str, columns: dict[str, str], path: Path) -> int:
        types = {
            "seq": "BIGINT",
            "entity_key": "VARCHAR",
            "event_time": "TIMESTAMP",
            "created_time": "TIMESTAMP",
            **columns,
        }
        self.db.execute(
            f"INSERT INTO {q(table)} SELECT * FROM read_csv(?, header = false, "
            f"columns = {_duck_struct(types)}, allow_quoted_nulls = false)",
            [str(path)],
        )
        return int(self.db.execute(f"SELECT coalesce(max(seq), 0) FROM {q(table)}").fetchone()[0])


def _duck_struct(types: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in types.items()) + "}"
