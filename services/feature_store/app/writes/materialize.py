"""Batch materialization: source table -> offline log + online store, incremental.

Each run reads the source rows already known (watermark <= now: the created-time
column when the source declares one, so late corrections are picked up, else the event
time) up to an event-time bound (``end_time``; none by default, so rows of the future
are loaded too and served online when their time comes), less what earlier runs read
(domain/materialization.py), in pages ordered by watermark. Every page commits with
what is loaded so far, so an interrupted run resumes where it stopped and never writes
a row twice; pages that may repeat rows (a re-run from ``start_time``, a widened event
bound) are compared with the offline log first. Runs are started and completed as
events, the completion carrying statistics of what was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db.locks import lock_name, try_session_lock
from libs.errors import Conflict, FailedPrecondition
from libs.eventstore import ANY_VERSION, ClientRequest, EventMetadata, EventStore, RequestLog
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.writes.writer import FeatureWriter
from services.feature_store.domain.definitions.sources import source_problems
from services.feature_store.domain.keys import join_keys_of
from services.feature_store.domain.materialization import (
    Loaded,
    RunScope,
    advanced,
    finished,
    run_scope,
    unwritten,
)
from services.feature_store.domain.times import MIN_TIME, utc
from services.feature_store.domain.values import is_list, to_python
from services.feature_store.domain.writes import IngestRow, RunningStats, row_from_source
from services.feature_store.events import CATALOG
from services.feature_store.store import materializations, offline
from services.feature_store.store.sources import BatchReader, describe

PAGE_ROWS = 5000
_LOCK_POLL_S = 0.1
_NUMERIC = {m.VALUE_TYPE_INT64, m.VALUE_TYPE_FLOAT64}
"""Features with running statistics (list features: of their lengths, ADR 0021)."""


@dataclass
class _Run:
    rows_read: int = 0
    written: int = 0
    quarantined: int = 0
    stats: dict[str, RunningStats] = field(default_factory=dict)


class Materializer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        cache: DefinitionsCache,
        writer: FeatureWriter,
        requests: RequestLog,
    ) -> None:
        self._pool = pool
        self._store = store
        self._cache = cache
        self._writer = writer
        self._requests = requests

    async def run(
        self,
        view_name: str,
        end_time: datetime | None,
        metadata: EventMetadata,
        *,
        start_time: datetime | None = None,
        request: ClientRequest | None = None,
    ) -> AsyncIterator[rr.MaterializeProgress]:
        """Load the view's source rows known now with event times up to ``end_time``
        (None: any) that earlier runs did not load, and with ``start_time`` also every
        row known at or after it (a re-run: rows already written are not written again).

        With a client ``request`` id, a run that completed answers a retry with its final
        progress (and reads nothing), and a duplicate arriving while it runs waits for it
        instead of being refused; the id is recorded with the run's completion, so a run
        cut off before it can only be continued, by a retry or any later run."""
        view = await self._cache.view(view_name)
        if view.WhichOneof("source") != "batch_source":
            raise FailedPrecondition(
                f"feature view {view_name!r} has a {view.WhichOneof('source')}; Materialize reads "
                "batch sources (push views take PushFeatures, stream views fill themselves)"
            )
        if (done := await self._requests.replay(request, rr.MaterializeProgress)) is not None:
            yield done
            return
        reader = BatchReader(view, join_keys_of(self._cache.definitions.entities[view.entity]))
        lock = lock_name("materialize", view.name, view.version)
        async with (
            self._pool.acquire() as conn,
            _run_lock(conn, lock, wait=request is not None) as locked,
        ):
            if not locked:
                raise Conflict(f"a materialization of {view_name!r} is running; wait for it to end")
            if (done := await self._requests.replay(request, rr.MaterializeProgress)) is not None:
                yield done  # the duplicate this one waited for completed it
                return
            columns, problems = await describe(conn, view.batch_source)
            problems = problems or source_problems(
                view, self._cache.definitions.entities[view.entity], columns
            )
            if problems:  # the table changed since the view was applied
                raise FailedPrecondition(
                    f"the batch source of {view_name!r} does not match its definition: "
                    + "; ".join(problems)
                )
            loaded = await materializations.loaded(conn, view.name, view.version)
            scope = run_scope(
                view.name,
                loaded,
                now=datetime.now(UTC),
                end_time=end_time,
                start_time=start_time,
            )
            runner = self._run_locked(conn, view, reader, loaded, scope, metadata, request)
            async for progress in runner:
                yield progress

    async def _run_locked(
        self,
        conn: asyncpg.Connection,
        view: m.FeatureView,
        reader: BatchReader,
        loaded: Loaded | None,
        scope: RunScope,
        metadata: EventMetadata,
        request: ClientRequest | None,
    ) -> AsyncIterator[rr.MaterializeProgress]:
        through = loaded.through if loaded is not None else MIN_TIME
        pending = await reader.pending(conn, scope)
        if pending == 0:  # nothing new since the last run: no run to record
            yield await self._complete(
                conn, view, loaded, scope, metadata, request, None, through, 0
            )
            return
        await self._record(conn, view, events_pb2.MaterializationStarted, scope, metadata)
        run = _Run(
            stats={
                f.name: RunningStats()
                for f in view.features
                if f.type in _NUMERIC or is_list(f.type)
            }
        )
        after: datetime | None = None
        while True:
            rows, mark = await reader.page(conn, scope, after, PAGE_ROWS)
            if mark is None:
                break
            ingest = [row_from_source(view, record) for record in rows]
            async with conn.transaction():
                if scope.recheck_through is not None and _mark(rows[0]) <= scope.recheck_through:
                    ingest = await self._not_written(conn, view, ingest)
                result = await self._writer.write(
                    conn, view, ingest, created_time=datetime.now(UTC), metadata=metadata
                )
                state = advanced(loaded, scope, mark)
                if state is not None and state != loaded:
                    await materializations.advance(conn, view.name, view.version, state)
            loaded = state
            run.rows_read += len(rows)
            run.written += result.written
            run.quarantined += result.quarantined
            for row in ingest:
                for index, feature in enumerate(view.features):
                    stats = run.stats.get(feature.name)
                    if stats is not None:
                        stats.add(to_python(row.values[index]))
            after = mark
            through = max(through, mark)
            yield _progress(run, through, done=False, pending=pending)
        final = await self._complete(
            conn, view, loaded, scope, metadata, request, run, through, pending
        )
        await self._writer.served()
        yield final

    async def _complete(
        self,
        conn: asyncpg.Connection,
        view: m.FeatureView,
        loaded: Loaded | None,
        scope: RunScope,
        metadata: EventMetadata,
        request: ClientRequest | None,
        run: _Run | None,
        through: datetime,
        pending: int,
    ) -> rr.MaterializeProgress:
        """Record what is loaded and the completion (with ``run``: an event), and the
        client's request id with the final progress, in one transaction."""

        async def complete() -> rr.MaterializeProgress:
            state = finished(loaded, scope)
            if state is not None and state != loaded:
                await materializations.advance(conn, view.name, view.version, state)
            if run is None:
                return _progress(_Run(), through, done=True)
            await self._record(
                conn, view, events_pb2.MaterializationCompleted, scope, metadata, run
            )
            return _progress(run, through, done=True, pending=pending)

        async with conn.transaction():
            return await self._requests.once(conn, request, rr.MaterializeProgress, complete)

    async def _not_written(
        self, conn: asyncpg.Connection, view: m.FeatureView, rows: list[IngestRow]
    ) -> list[IngestRow]:
        """``rows`` less those the offline log holds already (a page read again)."""
        identities = [(r.entity_key, r.event_time, r.created_time) for r in rows]
        written = await offline.written_rows(conn, view, identities)  # type: ignore[arg-type]
        return unwritten(rows, written)

    async def _record(  # type: ignore[no-untyped-def]
        self, conn, view, event_type, scope: RunScope, metadata, run: _Run | None = None
    ) -> None:
        event = event_type(feature_view=view.name, version=view.version)
        # The known-at range read: from what earlier runs had read (or the first instant).
        event.start_time.FromDatetime(scope.read_through or MIN_TIME)
        event.end_time.FromDatetime(scope.known_until)
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


def _mark(record: asyncpg.Record) -> datetime:
    return utc(record["watermark"])


@asynccontextmanager
async def _run_lock(conn: asyncpg.Connection, name: str, *, wait: bool) -> AsyncIterator[bool]:
    """The view version's run lock: tried once, or (``wait``: a client request id that a
    duplicate may be running) waited for, until the call's deadline."""
    while True:
        async with try_session_lock(conn, name) as locked:
            if locked or not wait:
                yield locked
                return
        await asyncio.sleep(_LOCK_POLL_S)
