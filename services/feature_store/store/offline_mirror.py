"""Columnar copies of the offline logs in DuckDB, kept up to date incrementally.

Postgres stays the source of truth. Before a point-in-time join, each log the
join reads is brought up to date by copying only the rows whose ``seq`` is past
what the mirror has (appends to a view commit in seq order, so that is exact),
and the join then runs in DuckDB's columnar engine instead of as millions of
Postgres index probes. Each changed log's timeline (store/pit_join.py) is rebuilt
right after the copy, so training-set queries only join.

The mirror is a DuckDB file under ``$LATHE_HOME`` (one per namespace), so a restarted
process copies only what was appended while it was down. It is derived data: each log's
copy records the Postgres table it came from and is checked against it (the same table,
and its last mirrored row still there, unchanged) before it is trusted; anything else
rebuilds that copy from Postgres. Each copy and its bookkeeping commit in one DuckDB
transaction, so a process killed mid-copy leaves the previous, consistent copy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import duckdb
import pyarrow as pa

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.store.offline import log_table, qualified_log_table
from services.feature_store.store.pit_join import JoinView, join_sql, q, timeline_sql
from services.feature_store.store.times import utc_wall_clock

_log = logging.getLogger(__name__)

DUCK_TYPES = {
    m.VALUE_TYPE_BOOL: "BOOLEAN",
    m.VALUE_TYPE_INT64: "BIGINT",
    m.VALUE_TYPE_FLOAT64: "DOUBLE",
    m.VALUE_TYPE_STRING: "VARCHAR",
    m.VALUE_TYPE_TIMESTAMP: "TIMESTAMP",
    m.VALUE_TYPE_INT64_LIST: "BIGINT[]",
    m.VALUE_TYPE_FLOAT64_LIST: "DOUBLE[]",
    m.VALUE_TYPE_STRING_LIST: "VARCHAR[]",
    m.VALUE_TYPE_BOOL_LIST: "BOOLEAN[]",
}
_LISTS = frozenset(
    {
        m.VALUE_TYPE_INT64_LIST,
        m.VALUE_TYPE_FLOAT64_LIST,
        m.VALUE_TYPE_STRING_LIST,
        m.VALUE_TYPE_BOOL_LIST,
    }
)
"""List features leave Postgres as JSON text (one unambiguous quoting of strings) and
are cast back to DuckDB lists as they load (ADR 0021)."""

_STATE = "lathe_mirrored_logs"
"""The mirror's bookkeeping: one row per mirrored log."""

_Anchor = tuple[str, dt.datetime, dt.datetime]
"""A log row's identity: entity key, event time, created time (UTC wall clock)."""


@dataclass(frozen=True)
class _MirroredLog:
    columns: tuple[str, ...]
    """Feature columns, in order (a view version may append features)."""
    relation_id: int
    """The Postgres log table's oid: a dropped and recreated table is another table."""
    last_seq: int
    timeline_seq: int
    """The ``last_seq`` the timeline was built at; behind ``last_seq`` means rebuild."""


class OfflineMirror:
    def __init__(
        self, pool: asyncpg.Pool, *, database: Path | None = None, scratch: Path | None = None
    ) -> None:
        """A mirror kept in ``database`` (a DuckDB file), or in memory when None."""
        self._pool = pool
        self._scratch = scratch
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        self.db = _open(database)
        self.db.execute("SET TimeZone = 'UTC'")
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {_STATE} (log_table VARCHAR PRIMARY KEY, "
            "columns VARCHAR[], relation_id BIGINT, last_seq BIGINT, timeline_seq BIGINT)"
        )
        self._logs = {
            row[0]: _MirroredLog(tuple(row[1]), row[2], row[3], row[4])
            for row in self.db.execute(f"SELECT * FROM {_STATE}").fetchall()
        }
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._writing = threading.Lock()
        """DuckDB write transactions one at a time: concurrent upserts of the bookkeeping
        table can fail with spurious write-write conflicts. Exports and reads still overlap."""
        """One per log: syncs of different views run side by side (Postgres exports one
        view while DuckDB loads another)."""

    def close(self) -> None:
        """Close the mirror; DuckDB folds its write-ahead log into the file."""
        self.db.close()

    async def sync(self, view: m.FeatureView) -> str:
        """Bring the view version's mirror and timeline up to date; returns the timeline's
        DuckDB table name."""
        # Shielded: a caller that gives up (a cancelled RPC) must not release the log's
        # lock while a DuckDB step of the sync is still running in its thread.
        return await asyncio.shield(self._sync(view))

    async def _sync(self, view: m.FeatureView) -> str:
        table = log_table(view.name, view.version)
        timeline = f"{table}_timeline"
        async with self._locks[table]:
            columns = {f.name: DUCK_TYPES[f.type] for f in view.features}
            mirrored = self._logs.get(table)
            relation_id, anchor = await self._source(view, mirrored)
            if mirrored is None or not await asyncio.to_thread(
                self._matches, table, mirrored, tuple(columns), relation_id, anchor
            ):
                mirrored = _MirroredLog(tuple(columns), relation_id, last_seq=0, timeline_seq=-1)
                await asyncio.to_thread(self._create, table, columns, mirrored)
                self._logs[table] = mirrored
            # Each step's state is kept as soon as it commits, so a later step failing
            # never leaves this process believing less than the file holds.
            with tempfile.TemporaryDirectory(dir=self._scratch) as directory:
                path = Path(directory) / "rows.csv"
                if await self._export(view, mirrored.last_seq, path):
                    mirrored = await asyncio.to_thread(self._load, table, columns, path, mirrored)
                    self._logs[table] = mirrored
            if mirrored.timeline_seq != mirrored.last_seq:
                mirrored = await asyncio.to_thread(self._build_timeline, timeline, table, mirrored)
                self._logs[table] = mirrored
        return timeline

    def join(self, labels: pa.Table, views: Sequence[JoinView]) -> pa.Table:
        """``labels`` joined point in time with the timelines of ``views`` (synced first),
        in DuckDB (store/pit_join.py). Blocking: call it in a thread."""
        name = f"labels_{uuid.uuid4().hex}"
        with _cursor(self.db) as cursor:
            cursor.register(name, labels)
            try:
                return cursor.sql(join_sql(name, labels.column_names, views)).to_arrow_table()
            finally:
                cursor.unregister(name)

    async def _source(
        self, view: m.FeatureView, mirrored: _MirroredLog | None
    ) -> tuple[int, _Anchor | None]:
        """The log table's oid, and the identity of its row at the mirror's last seq."""
        last_seq = mirrored.last_seq if mirrored is not None else 0
        row = await self._pool.fetchrow(
            "SELECT c.oid::bigint AS relation_id, l.entity_key, "
            f"{utc_wall_clock('l.event_time')} AS event_time, "
            f"{utc_wall_clock('l.created_time')} AS created_time "
            "FROM (SELECT $1::text::regclass::oid AS oid) AS c "
            f"LEFT JOIN {qualified_log_table(view.name, view.version)} AS l ON l.seq = $2",
            qualified_log_table(view.name, view.version),
            last_seq,
        )
        assert row is not None  # a one-row relation left-joined
        anchor = None
        if row["entity_key"] is not None:
            anchor = (row["entity_key"], row["event_time"], row["created_time"])
        return row["relation_id"], anchor

    def _matches(
        self,
        table: str,
        mirrored: _MirroredLog,
        columns: tuple[str, ...],
        relation_id: int,
        anchor: _Anchor | None,
    ) -> bool:
        """Whether the mirrored copy is a prefix of the Postgres log it claims to be."""
        if mirrored.columns != columns or mirrored.relation_id != relation_id:
            return False
        if mirrored.last_seq == 0:
            return True
        with _cursor(self.db) as db:
            mirrored_anchor = db.execute(
                f"SELECT entity_key, event_time, created_time FROM {q(table)} WHERE seq = ?",
                [mirrored.last_seq],
            ).fetchone()
        matches = anchor is not None and mirrored_anchor == anchor
        if not matches:
            _log.warning(
                "the offline mirror's copy of %s does not match Postgres (restored or "
                "replaced database?); copying it again",
                table,
            )
        return matches

    async def _export(self, view: m.FeatureView, after: int, path: Path) -> int:
        """COPY the rows past ``after`` to a CSV file; returns how many."""
        features = "".join(f", {_exported(f)}" for f in view.features)
        # Timestamps leave as UTC wall-clock time, so no session time zone is involved
        # (and the first and last instants as themselves, not as infinities); every
        # non-null value is quoted, so an unquoted empty field is a NULL.
        query = (
            f"SELECT seq, entity_key, {utc_wall_clock('event_time')}, "
            f"{utc_wall_clock('created_time')}{features} "
            f"FROM {qualified_log_table(view.name, view.version)} "
            f"WHERE seq > {int(after)} ORDER BY seq"
        )
        async with self._pool.acquire() as conn:
            status = await conn.copy_from_query(
                query, output=str(path), format="csv", force_quote=True
            )
        return int(status.split()[-1])

    def _create(self, table: str, columns: dict[str, str], mirrored: _MirroredLog) -> None:
        feature_columns = "".join(f", {q(name)} {kind}" for name, kind in columns.items())
        with self._writing, _transaction(self.db) as db:
            db.execute(
                f"CREATE OR REPLACE TABLE {q(table)} (seq BIGINT, entity_key VARCHAR, "
                f"event_time TIMESTAMP, created_time TIMESTAMP{feature_columns})"
            )
            self._record(db, table, mirrored)

    def _load(
        self, table: str, columns: dict[str, str], path: Path, mirrored: _MirroredLog
    ) -> _MirroredLog:
        types = {
            "seq": "BIGINT",
            "entity_key": "VARCHAR",
            "event_time": "TIMESTAMP",
            "created_time": "TIMESTAMP",
            **{name: "VARCHAR" if kind.endswith("[]") else kind for name, kind in columns.items()},
        }
        selected = ", ".join(_loaded(name, kind) for name, kind in columns.items())
        with self._writing, _transaction(self.db) as db:
            # Rows the copy already has are skipped, so a repeated export adds nothing twice.
            db.execute(
                f"INSERT INTO {q(table)} SELECT seq, entity_key, event_time, created_time"
                f"{''.join(', ' + c for c in [selected] if c)} FROM read_csv(?, header = false, "
                f"columns = {_duck_struct(types)}, allow_quoted_nulls = false) "
                f"WHERE seq > (SELECT coalesce(max(seq), 0) FROM {q(table)})",
                [str(path)],
            )
            last_seq = db.execute(f"SELECT coalesce(max(seq), 0) FROM {q(table)}").fetchone()
            assert last_seq is not None
            loaded = replace(mirrored, last_seq=int(last_seq[0]))
            self._record(db, table, loaded)
        return loaded

    def _build_timeline(self, timeline: str, table: str, mirrored: _MirroredLog) -> _MirroredLog:
        built = replace(mirrored, timeline_seq=mirrored.last_seq)
        with self._writing, _transaction(self.db) as db:
            db.execute(
                f"CREATE OR REPLACE TABLE {q(timeline)} AS {timeline_sql(table, mirrored.columns)}"
            )
            self._record(db, table, built)
        return built

    def _record(self, db: duckdb.DuckDBPyConnection, table: str, mirrored: _MirroredLog) -> None:
        db.execute(
            f"INSERT OR REPLACE INTO {_STATE} VALUES (?, ?, ?, ?, ?)",
            [
                table,
                list(mirrored.columns),
                mirrored.relation_id,
                mirrored.last_seq,
                mirrored.timeline_seq,
            ],
        )


def _exported(feature: m.Field) -> str:
    """How a feature column leaves Postgres for the CSV: timestamps as UTC wall-clock
    time, lists as JSON text, anything else as itself."""
    if feature.type == m.VALUE_TYPE_TIMESTAMP:
        return utc_wall_clock(q(feature.name))
    if feature.type == m.VALUE_TYPE_FLOAT64_LIST:
        # Not JSON: DuckDB reads JSON's "-0" as an integer (0.0). Postgres writes doubles
        # shortest-exact, and "[...]" of them casts to DOUBLE[] bit for bit.
        return f"'[' || array_to_string({q(feature.name)}, ',') || ']'"
    if feature.type in _LISTS:
        return f"to_json({q(feature.name)})::text"
    return q(feature.name)


def _loaded(name: str, kind: str) -> str:
    """A feature column as it is read from the CSV: lists cast back from their text."""
    if kind == "DOUBLE[]":
        return f"CAST({q(name)} AS DOUBLE[])"
    if kind.endswith("[]"):
        return f"CAST(CAST({q(name)} AS JSON) AS {kind})"
    return q(name)


def _open(database: Path | None) -> duckdb.DuckDBPyConnection:
    """The mirror's DuckDB; in memory when the file cannot be used (it is derived data)."""
    if database is None:
        return duckdb.connect(":memory:")
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(database))
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            return _start_again(database, exc)
        # Another feature-store process on this host holds the file (one writer at a time).
        _log.warning("offline mirror %s is unavailable (%s); mirroring in memory", database, exc)
        return duckdb.connect(":memory:")
    except duckdb.Error as exc:
        return _start_again(database, exc)


def _start_again(database: Path, exc: Exception) -> duckdb.DuckDBPyConnection:
    """A corrupt file, or one an older DuckDB wrote: derived data, so begin a new one."""
    _log.warning("offline mirror %s is unreadable (%s); starting it again", database, exc)
    database.unlink(missing_ok=True)
    Path(f"{database}.wal").unlink(missing_ok=True)
    return duckdb.connect(str(database))


@contextmanager
def _cursor(db: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection of the caller's own to the same database (threads must not share one)."""
    cursor = db.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


@contextmanager
def _transaction(db: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One DuckDB transaction on a cursor of its own: committed on success, rolled back on
    any error."""
    with _cursor(db) as cursor:
        cursor.execute("BEGIN TRANSACTION")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")


def _duck_struct(types: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in types.items()) + "}"
