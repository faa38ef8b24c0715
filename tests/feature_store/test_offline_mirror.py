"""The offline mirror survives restarts, copies only what is new, and never trusts a stale copy."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from lathe.feature_store.v1 import message_pb2 as m
from libs.config import LatheSettings
from libs.runtime import ServiceHost
from services.feature_store.service import SPEC
from services.feature_store.store import offline
from services.feature_store.store.offline_mirror import OfflineMirror
from tests.feature_store.helpers import suffix
from tests.support.hosting import hosted

T0 = datetime(2026, 5, 1, tzinfo=UTC)


class RecordingMirror(OfflineMirror):
    """Notes the seq each Postgres export starts after."""

    exported_after: list[int]

    async def _export(self, view: m.FeatureView, after: int, path: Path) -> int:
        self.exported_after.append(after)
        return await super()._export(view, after, path)


def _mirror(
    pool: asyncpg.Pool, database: Path | None, kind: type[RecordingMirror] = RecordingMirror
) -> RecordingMirror:
    mirror = kind(pool, database=database)
    mirror.exported_after = []
    return mirror


def _view() -> m.FeatureView:
    return m.FeatureView(
        name=f"mirror_{suffix()}",
        version=1,
        features=[m.Field(name="rate", type=m.VALUE_TYPE_FLOAT64)],
    )


async def _append(pool: asyncpg.Pool, view: m.FeatureView, rates: list[float], day: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await offline.ensure_log_table(conn, view)
        await offline.lock_for_append(conn, view)
        moment = T0 + timedelta(days=day)
        extra = [36] * (len(view.features) - 1)  # a term, once the view has one
        await offline.append_rows(
            conn,
            view,
            [(f"L{i}", moment, moment, [rate, *extra]) for i, rate in enumerate(rates)],
        )


async def _timeline(mirror: OfflineMirror, view: m.FeatureView) -> list[tuple[object, ...]]:
    timeline = await mirror.sync(view)
    return mirror.db.execute(f'SELECT * FROM "{timeline}" ORDER BY ALL').fetchall()


async def _fresh_timeline(pool: asyncpg.Pool, view: m.FeatureView) -> list[tuple[object, ...]]:
    """What a mirror that starts from nothing builds: the reference every test compares to."""
    mirror = OfflineMirror(pool)
    try:
        return await _timeline(mirror, view)
    finally:
        mirror.close()


async def _mirror_and_stop(
    pool: asyncpg.Pool, view: m.FeatureView, database: Path, rates: list[float]
) -> None:
    """A first process: ``rates`` land in the view's log on day 0, are mirrored, it stops."""
    await _append(pool, view, rates, day=0)
    first = _mirror(pool, database)
    await first.sync(view)
    first.close()


@asynccontextmanager
async def _restarted(
    pool: asyncpg.Pool, view: m.FeatureView, database: Path
) -> AsyncIterator[RecordingMirror]:
    """The next process's mirror, once synced: its timeline must equal a fresh mirror's."""
    restarted = _mirror(pool, database)
    try:
        assert await _timeline(restarted, view) == await _fresh_timeline(pool, view)
        yield restarted
    finally:
        restarted.close()


async def test_a_restarted_mirror_copies_only_rows_appended_while_it_was_down(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    view = _view()
    database = tmp_path / "mirror.duckdb"
    await _mirror_and_stop(db_pool, view, database, [1.0, 2.0, 3.0])

    await _append(db_pool, view, [4.0, 5.0], day=1)
    async with _restarted(db_pool, view, database) as restarted:
        assert restarted.exported_after == [3], "it copied again what it already had"
        rows = restarted.db.execute(f'SELECT count(*) FROM "log_{view.name}_v1"').fetchone()
        assert rows == (5,)


@pytest.mark.parametrize(
    "replace_log",
    ["DROP TABLE {table}", "TRUNCATE {table} RESTART IDENTITY"],
    ids=["recreated-table", "same-table-other-rows"],
)
async def test_a_copy_of_a_replaced_log_is_rebuilt_not_extended(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool, tmp_path: Path, replace_log: str
) -> None:
    """A restored or replaced database: same table name, other rows; nothing stale survives."""
    view = _view()
    database = tmp_path / "mirror.duckdb"
    await _mirror_and_stop(db_pool, view, database, [1.0, 2.0])

    await db_pool.execute(
        replace_log.format(table=offline.qualified_log_table(view.name, view.version))
    )
    await _append(db_pool, view, [7.0, 8.0, 9.0], day=3)
    async with _restarted(db_pool, view, database) as restarted:
        assert restarted.exported_after == [0]


async def test_a_feature_appended_to_the_view_rebuilds_its_copy(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    view = _view()
    database = tmp_path / "mirror.duckdb"
    await _mirror_and_stop(db_pool, view, database, [1.0, 2.0])

    view.features.append(m.Field(name="term", type=m.VALUE_TYPE_INT64))
    await _append(db_pool, view, [3.0], day=1)  # adds the column; old rows have no term
    async with _restarted(db_pool, view, database) as restarted:
        assert restarted.exported_after == [0]


async def test_a_copy_that_failed_midway_leaves_the_previous_one(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The rows and the bookkeeping of one copy commit together, or not at all."""
    view = _view()
    database = tmp_path / "mirror.duckdb"
    await _mirror_and_stop(db_pool, view, database, [1.0, 2.0])

    class FailingMirror(RecordingMirror):
        def _record(self, db: object, table: str, mirrored: object) -> None:
            raise OSError("disk full")

    await _append(db_pool, view, [3.0, 4.0], day=1)
    failing = _mirror(db_pool, database, FailingMirror)
    with pytest.raises(OSError, match="disk full"):
        await failing.sync(view)
    failing.close()

    async with _restarted(db_pool, view, database) as restarted:
        assert restarted.exported_after == [2], "the failed copy's rows were kept"


async def test_a_mirror_file_locked_by_another_process_falls_back_to_memory(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    view = _view()
    database = tmp_path / "mirror.duckdb"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import duckdb, sys, time; db = duckdb.connect(sys.argv[1]); print('held', flush=True); "
        "time.sleep(60)",
        str(database),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        await _append(db_pool, view, [1.0, 2.0], day=0)
        mirror = _mirror(db_pool, database)
        try:
            (name,) = mirror.db.execute("SELECT current_database()").fetchone() or ("",)
            assert name == "memory"
            assert await _timeline(mirror, view) == await _fresh_timeline(db_pool, view)
        finally:
            mirror.close()
    finally:
        holder.kill()
        await holder.wait()


def _mirror_files(settings: LatheSettings) -> set[str]:
    folder = settings.feature_store_mirror_path.parent
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


async def test_the_service_closes_its_mirror_file_when_it_stops(
    test_settings: LatheSettings,
) -> None:
    """Closed, the file holds everything (no write-ahead log left to replay at the next start)."""
    name = test_settings.feature_store_mirror_path.name
    async with hosted(SPEC, test_settings):
        assert {name, f"{name}.wal"} <= _mirror_files(test_settings), "nothing written yet"
    assert _mirror_files(test_settings) == {name}


async def test_a_corrupt_mirror_file_is_started_again_not_abandoned(
    feature_store_host: ServiceHost, db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    view = _view()
    database = tmp_path / "mirror.duckdb"
    database.write_bytes(b"not a DuckDB file at all" * 100)
    await _append(db_pool, view, [1.0, 2.0], day=0)
    mirror = _mirror(db_pool, database)
    try:
        (name,) = mirror.db.execute("SELECT current_database()").fetchone() or ("",)
        assert name == "mirror", "it fell back to memory: every restart would copy everything"
        assert await _timeline(mirror, view) == await _fresh_timeline(db_pool, view)
    finally:
        mirror.close()
