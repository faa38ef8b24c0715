"""Cancelling a job: record the request, then stop its workers where they run.

A queued job is cancelled at once (``cancel_requested`` and ``cancelled`` together); a job
past the queue is marked cancelling and the trainer that runs it stops its workers and
records ``cancelled`` (app/runner.py). Cancelling an ended or cancelling job changes
nothing. With a client request id, the decision and the id are recorded in one
transaction, and a retry gets the first call's reply (docs/adr/0015-client-request-ids.md).
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
from google.protobuf.message import Message

from lathe.trainer.v1 import message_pb2
from libs.db import transaction
from libs.errors import Conflict, NotFound
from libs.eventstore import ClientRequest, EventMetadata, RequestLog, WrongExpectedVersion
from services.trainer.domain import job as decide
from services.trainer.domain.job import Job, to_proto
from services.trainer.store.jobs import JobStore

_RETRIES = 5


class Canceller:
    def __init__(
        self,
        pool: asyncpg.Pool,
        jobs: JobStore,
        requests: RequestLog,
        *,
        on_cancel: Callable[[str], None],
    ) -> None:
        self._pool = pool
        self._jobs = jobs
        self._requests = requests
        self._on_cancel = on_cancel
        """Tells this process's supervisor to stop the job's workers now, if it runs them."""

    async def cancel(
        self,
        job_id: str,
        reason: str,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> message_pb2.TrainingJob:
        """The job after the cancel was recorded; NotFound if there is no such job."""
        for _ in range(_RETRIES):
            try:
                async with transaction(self._pool) as conn:
                    job = await self._requests.once(
                        conn,
                        request,
                        message_pb2.TrainingJob,
                        lambda conn=conn: self._cancel(conn, job_id, reason, metadata),
                    )
            except WrongExpectedVersion:
                continue  # the job moved on meanwhile: decide again on its new state
            self._on_cancel(job_id)
            return job
        raise Conflict(f"job {job_id} kept changing while it was being cancelled; retry")

    async def _cancel(
        self, conn: asyncpg.Connection, job_id: str, reason: str, metadata: EventMetadata
    ) -> message_pb2.TrainingJob:
        def cancel(job: Job) -> list[Message]:
            if job.version == 0:
                raise NotFound(f"no training job {job_id!r}; ListTrainingJobs shows them")
            return decide.decide_cancel(job, reason)

        return to_proto(await self._jobs.decide(conn, job_id, cancel, metadata))
