"""Many writers of one job, against real Postgres: each write lands, none is starved.

A cancel raced a worker recording progress many times a second and, with optimistic
concurrency alone, could lose every one of its tries (ABORTED "kept changing"). Writers of
a job now queue on its read-model row; this test holds that for any number of them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio
from google.protobuf.message import Message

from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2
from libs.db import apply_migrations, transaction
from libs.eventstore import EventMetadata, EventStore
from services.trainer.domain.job import Job
from services.trainer.service import SPEC
from services.trainer.store.jobs import Decide, JobStore

WRITERS = 40


@pytest_asyncio.fixture(loop_scope="session")
async def jobs(db_pool: asyncpg.Pool, event_store: EventStore) -> AsyncIterator[JobStore]:
    """A job store on the trainer's tables and a fresh event store, with no trainer running
    (a trainer's supervisor would take the test's live job and write to it too)."""
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, "trainer", list(SPEC.migrations))
    yield JobStore(db_pool, event_store)


async def test_concurrent_writers_of_one_job_all_land_in_order(
    jobs: JobStore, db_pool: asyncpg.Pool
) -> None:
    job_id = str(uuid.uuid4())
    meta = EventMetadata(actor="test")
    submitted = ev.JobSubmitted(job_id=job_id, spec=message_pb2.TrainingJobSpec(model_name="m"))
    async with transaction(db_pool) as conn:
        await jobs.create(conn, job_id, [submitted, ev.JobQueued(queue_position=0)], meta)
    try:
        await _race(jobs, job_id, meta, db_pool)
    finally:  # a live job left in trainer.jobs would be taken by a later test's trainer
        await db_pool.execute("DELETE FROM trainer.jobs WHERE job_id = $1", job_id)


async def _race(jobs: JobStore, job_id: str, meta: EventMetadata, db_pool: asyncpg.Pool) -> None:
    seen_versions: list[int] = []

    def progress(owner: str) -> Decide:
        def decide(job: Job) -> list[Message]:
            seen_versions.append(job.version)
            return [ev.PreparationStarted(owner=owner)]

        return decide

    await asyncio.gather(*(jobs.record(job_id, progress(f"w{i}"), meta) for i in range(WRITERS)))

    job = await jobs.load(job_id)
    assert job.version == 2 + WRITERS, "every writer's event was recorded, none lost"
    # Queued writers decide one after another on the state the previous one left, so no
    # decision was taken twice on the same version (optimistic retries would repeat some).
    assert sorted(seen_versions) == list(range(2, 2 + WRITERS))
    row = await db_pool.fetchval(
        "SELECT stream_version FROM trainer.jobs WHERE job_id = $1", job_id
    )
    assert row == job.version
