"""Reading jobs back: one job, pages of jobs, and a job's events from the first, then live.

``follow`` is what ``WatchTrainingJob`` streams: it folds the job's stream from the start
(so every event comes with the state it led to), skips what the caller saw already, and
polls for more until the job ends. A client that connects late sees the whole history.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import Message

from lathe.trainer.v1 import message_pb2
from libs.errors import NotFound
from services.trainer.domain.job import Job, evolve
from services.trainer.events import CATALOG
from services.trainer.store.jobs import JobStore

WATCH_POLL_S = 0.25
"""How often a followed job's stream is read for new events."""


@dataclass(frozen=True)
class JobChange:
    """One recorded event of a job, with the state it left the job in."""

    stream_version: int
    """The event's version in the job's stream (1 for ``submitted``)."""
    event_id: str
    recorded_at: datetime
    state: int
    """The job's ``JobState`` after the event."""
    event: Message
    """The event message (``lathe.trainer.v1`` events)."""


class JobQueries:
    def __init__(self, jobs: JobStore, *, poll_s: float = WATCH_POLL_S) -> None:
        self._jobs = jobs
        self._poll_s = poll_s

    async def job(self, job_id: str) -> message_pb2.TrainingJob:
        """The job as its read model holds it; NotFound if there is none."""
        job = await self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no training job {job_id!r}; ListTrainingJobs shows them")
        return job

    async def page(
        self,
        *,
        model_name: str,
        state: int,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> tuple[list[message_pb2.TrainingJob], tuple[datetime, str] | None]:
        """Newest first, created before ``before`` (created_at, job id); and the cursor of
        the next page (None on the last)."""
        return await self._jobs.page(model_name=model_name, state=state, before=before, limit=limit)

    async def follow(self, job_id: str, *, after_version: int = 0) -> AsyncIterator[JobChange]:
        """Every event of the job after ``after_version``, then new ones as they are
        recorded, until the job ends; NotFound (before the first) if there is no job."""
        await self.job(job_id)
        job, version = Job(job_id), 0
        while True:
            for recorded in await self._jobs.events_after(job_id, version):
                event = CATALOG.decode(recorded.event_type, recorded.payload)
                job = evolve(job, event, recorded.recorded_at)
                version = recorded.stream_version
                if version > after_version:
                    yield JobChange(
                        version, str(recorded.event_id), recorded.recorded_at, job.state, event
                    )
            if job.terminal:
                return
            await asyncio.sleep(self._poll_s)
