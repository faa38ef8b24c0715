"""Batch materialization: source table -> offline log + online store, incremental.

Each run continues from the view version's stored watermark and reads the
source in pages ordered by its watermark column: the created-time column when
the source declares one (so late corrections are picked up), else the event
time. Every page commits with the new watermark, so an interrupted run resumes
where it stopped and never writes a row twice. Runs are started and completed
as events, the completion carrying statistics of what was written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db.locks import lock_name, try_session_lock
from libs.errors import Conflict, FailedPrecondition
from libs.eventstore import ANY_VERSION, EventMetadata, EventStore
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.writes.writer import FeatureWriter
from services.feature_store.domain.writes import RunningStats, row_from_source
from services.feature_store.events import CATALOG
from services.feature_store.store import materializations
from services.feature_store.store.sources import BatchReader

PAGE_ROWS = 5000
_BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)
_NUMERIC = {m.VALUE_TYPE_INT64, m.VALUE_TYPE_FLOAT64}


@dataclass
class _Run:
    rows_read: int = 0
    written: int = 0
    quarantined: int = 0
    stats: dict[str, RunningStats] = field(default_factory=dict)


class Materializer:
    def __init__(
        self, pool: asyncpg.Pool, store: EventStore, cache: DefinitionsCache, writer: FeatureWriter
    ) -> None:
        self._pool = pool
        self._store = store
        self._cache = cache
        self._writer = writer

    async def run(
        self, view_name: str, end_time: datetime | None, metadata: EventMetadata
    ) -> AsyncIterator[rr.MaterializeProgress]:
        view = await self._cache.view(view_name)
        if view.WhichOneof("source") != "batch_source":
            raise FailedPrecondition(
                f"feature view {view_name!r} has a {view.WhichOneof('source')}; Materialize reads "
                "batch sources (push views take PushFeatures, stream views fill themselves)"
            )
        until = end_time or datetime.now(UTC)
        reader = BatchReader(view, self._cache.definitions.entities[view.entity].join_key)
        lock = lock_name("materialize", view.name, view.version)
        async with self._pool.acquire() as conn, try_session_lock(conn, lock) as locked:
            if not locked:
                raise Conflict(f"a materialization of {view_name!r} is running; wait for it to end")
            async for progress in self._run_locked(conn, view, reader, until, metadata):
                yield progress

    async def _run_locked(
        self,
        conn: asyncpg.Connection,
        view: m.FeatureView,
        reader: BatchReader,
        until: datetime,
        metadata: EventMetadata,
    ) -> AsyncIterator[rr.MaterializeProgress]:
        start = await materializations.watermark(conn, view.name, view.version) or _BEGINNING
        if until <= start:
            yield _progress(_Run(), start, done=True)
            return
        pending = await reader.pending(conn, start, until)
        if pending == 0:  # nothing new since the last run: no run to record
            yield _progress(_Run(), start, done=True)
            return
        await self._record(conn, view, events_pb2.MaterializationStarted, start, until, metadata)
        run = _Run(stats={f.name: RunningStats() for f in view.features if f.type in _NUMERIC})
        after = start
        while True:
            rows, mark = await reader.page(conn, after, until, PAGE_ROWS)
            if mark is None:
                break
            ingest = [row_from_source(view, record) for record in rows]
            async with conn.transaction():
                result = await self._writer.write(
                    conn, view, ingest, created_time=datetime.now(UTC), metadata=metadata
                )
                await materializations.advance(conn, view.name, view.version, mark)
            run.rows_read += len(rows)
            run.written += result.written
            run.quarantined += result.quarantined
            for record in rows:
                for name, stats in run.stats.items():
                    stats.add(record[name])
            after = mark
            yield _progress(run, mark, done=False, pending=pending)
        await self._record(
            conn, view, events_pb2.MaterializationCompleted, start, until, metadata, run
        )
        await self._writer.served()
        yield _progress(run, until, done=True, pending=pending)

    async def _record(  # type: ignore[no-untyped-def]
        self, conn, view, event_type, start, end, metadata, run: _Run | None = None
    ) -> None:
        event = event_type(feature_view=view.name, version=view.version)
        event.start_time.FromDatetime(start)
        event.end_time.FromDatetime(end)
        if run is not None:
            event.rows_written = run.written
            event.rows_quarantined = run.quarantined
            for name, stats in run.stats.items():
                event.statistics.add(
                    feature=name,
                    count=stats.count,
                    nulls=stats.nulls,
                    mean=stats.total / stats.count if stats.count else 0.0,
                    min=stats.low if stats.count else 0.0,
                    max=stats.high if stats.count else 0.0,
                )
        await self._store.append(
            f"materialization-{view.name}",
            [CATALOG.new_event(event, metadata)],
            expected_version=ANY_VERSION,
            conn=conn,
        )


def _progress(
    run: _Run, through: datetime, *, done: bool, pending: int | None = None
) -> rr.MaterializeProgress:
    stamp = Timestamp()
    stamp.FromDatetime(through)
    return rr.MaterializeProgress(
        rows_read=run.rows_read,
        rows_written=run.written,
        rows_quarantined=run.quarantined,
        through=stamp,
        done=done,
        rows_total=pending or 0,
    )
