"""Job streams in the event store and the ``trainer.jobs`` read model.

Every change of a job is decided on the job as its stream says it is now (domain/job.py)
and appended with that stream version as the expected one, in the same transaction as the
read-model row: a concurrent writer (a cancel, a stale attempt) makes the append fail and
the decision is taken again on the new state, never applied twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

import asyncpg
from google.protobuf.message import Message

from lathe.trainer.v1 import message_pb2
from libs.db import transaction
from libs.errors import Conflict
from libs.eventstore import (
    NO_STREAM,
    EventMetadata,
    EventStore,
    RecordedEvent,
    WrongExpectedVersion,
)
from services.trainer.domain.job import LIVE, Job, evolve, replay, to_proto
from services.trainer.events import CATALOG, job_stream

Decide = Callable[[Job], list[Message]]
_RETRIES = 5


class JobStore:
    def __init__(self, pool: asyncpg.Pool, store: EventStore) -> None:
        self._pool = pool
        self._store = store

    async def load(self, job_id: str, conn: asyncpg.Connection | None = None) -> Job:
        events = await self._store.read_stream(job_stream(job_id), conn=conn)
        return replay(
            job_id,
            [
                (
                    CATALOG.decode(e.event_type, e.payload),
                    e.recorded_at,
                    e.metadata.actor,
                    e.metadata.traceparent,
                )
                for e in events
            ],
        )

    async def create(
        self, conn: asyncpg.Connection, job_id: str, events: list[Message], metadata: EventMetadata
    ) -> Job:
        """Record a new job's first events in the caller's transaction; Conflict if the id
        exists."""
        try:
            return await self._append(conn, Job(job_id), events, NO_STREAM, metadata)
        except WrongExpectedVersion:
            raise Conflict(f"job {job_id} exists already") from None

    async def decide(
        self, conn: asyncpg.Connection, job_id: str, decide: Decide, metadata: EventMetadata
    ) -> Job:
        """Decide on the job as ``conn`` reads it and record that, in the caller's
        transaction; WrongExpectedVersion if another writer got there first (decide again
        in a new transaction)."""
        # Writers of one job queue on its row rather than race: with optimistic concurrency
        # alone, a cancel could lose every try to a worker recording progress many times a
        # second. Read committed: the load below sees what the previous holder committed.
        await conn.execute("SELECT 1 FROM trainer.jobs WHERE job_id = $1 FOR UPDATE", job_id)
        job = await self.load(job_id, conn)
        events = decide(job)
        if not events:
            return job
        return await self._append(conn, job, events, job.version, metadata)

    async def record(self, job_id: str, decide: Decide, metadata: EventMetadata) -> Job:
        """Decide on the current job and record what was decided (nothing if nothing),
        each try in a transaction of its own."""
        for _ in range(_RETRIES):
            try:
                async with transaction(self._pool) as conn:
                    return await self.decide(conn, job_id, decide, metadata)
            except WrongExpectedVersion:
                continue
        raise Conflict(f"job {job_id} kept changing under this write; retry")

    async def _append(
        self,
        conn: asyncpg.Connection,
        job: Job,
        events: list[Message],
        expected: int,
        metadata: EventMetadata,
    ) -> Job:
        result = await self._store.append(
            job_stream(job.job_id),
            [CATALOG.new_event(e, metadata) for e in events],
            expected_version=expected,
            conn=conn,
        )
        for recorded, event in zip(result.events, events, strict=True):
            job = evolve(job, event, recorded.recorded_at, actor=metadata.actor)
        if expected == NO_STREAM:
            job = replace(job, traceparent=metadata.traceparent)
        await conn.execute(
            """INSERT INTO trainer.jobs (job_id, model_name, state, created_at, updated_at,
                   stream_version, body)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (job_id) DO UPDATE SET state = EXCLUDED.state,
                   updated_at = EXCLUDED.updated_at, stream_version = EXCLUDED.stream_version,
                   body = EXCLUDED.body""",
            job.job_id,
            job.spec.model_name,
            job.state,
            job.created_at,
            job.updated_at,
            job.version,
            to_proto(job).SerializeToString(deterministic=True),
        )
        return job

    async def get(self, job_id: str) -> message_pb2.TrainingJob | None:
        body = await self._pool.fetchval("SELECT body FROM trainer.jobs WHERE job_id = $1", job_id)
        return message_pb2.TrainingJob.FromString(body) if body is not None else None

    async def page(
        self,
        *,
        model_name: str,
        state: int,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> tuple[list[message_pb2.TrainingJob], tuple[datetime, str] | None]:
        """Newest first; the cursor of the next page (or None)."""
        rows = await self._pool.fetch(
            """SELECT job_id, created_at, body FROM trainer.jobs
               WHERE ($1 = '' OR model_name = $1) AND ($2 = 0 OR state = $2)
                 AND ($3::timestamptz IS NULL OR (created_at, job_id) < ($3, $4))
               ORDER BY created_at DESC, job_id DESC LIMIT $5""",
            model_name,
            state,
            before[0] if before else None,
            before[1] if before else "",
            limit + 1,
        )
        jobs = [message_pb2.TrainingJob.FromString(r["body"]) for r in rows[:limit]]
        more = len(rows) > limit
        return jobs, (rows[limit - 1]["created_at"], rows[limit - 1]["job_id"]) if more else None

    async def live(self) -> list[tuple[str, int]]:
        """Jobs not ended, oldest first: (job id, state)."""
        rows = await self._pool.fetch(
            "SELECT job_id, state FROM trainer.jobs WHERE state = ANY($1::smallint[]) "
            "ORDER BY created_at, job_id",
            sorted(LIVE),
        )
        return [(r["job_id"], r["state"]) for r in rows]

    async def queued(self, conn: asyncpg.Connection | None = None) -> int:
        """How many jobs wait in the queue."""
        return int(
            await (conn or self._pool).fetchval(
                "SELECT count(*) FROM trainer.jobs WHERE state = $1",
                message_pb2.JOB_STATE_QUEUED,
            )
        )

    async def events_after(self, job_id: str, version: int) -> list[RecordedEvent]:
        return await self._store.read_stream(job_stream(job_id), from_version=version + 1)
