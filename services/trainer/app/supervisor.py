"""Process supervision: which jobs this trainer runs, how many at once, and who owns each.

A background task of the service. Every ``poll`` (or at once when a submit or a finished
job wakes it) it reads the live jobs, oldest first, and takes those it can: a job runs
where a session-level Postgres advisory lock on its id is held, on one connection kept
for the purpose. A trainer that dies loses its connection and with it its locks, so
another trainer (or itself, restarted) takes the job over and resumes it; jobs already
past the queue are taken before queued ones and at most ``max_concurrent_jobs`` run here.
Jobs queue beyond that, up to ``max_queued_jobs`` (submit refuses more).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from lathe.trainer.v1 import message_pb2
from services.trainer.app.runner import JobRunner
from services.trainer.store.jobs import JobStore
from services.trainer.store.ownership import JobLocks

_log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        jobs: JobStore,
        runner: JobRunner,
        locks: JobLocks,
        *,
        max_concurrent: int,
        poll_s: float = 1.0,
    ) -> None:
        self._jobs = jobs
        self._runner = runner
        self._locks = locks
        self._max_concurrent = max_concurrent
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._running: dict[str, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._unlocking: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """Stop a job this process runs now (its CancelRequested is recorded already)."""
        running = self._running.get(job_id)
        if running is not None:
            running[1].set()

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    await self._schedule()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    _log.warning("scheduling training jobs failed (%s); retrying", error)
                    await self._drop_connection()
                self._wake.clear()
                waiters = {
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                }
                _, pending = await asyncio.wait(
                    waiters, timeout=self._poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
        finally:
            tasks = [task for task, _ in self._running.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._drop_connection()

    async def _schedule(self) -> None:
        live = await self._jobs.live()
        live.sort(key=lambda item: item[1] == message_pb2.JOB_STATE_QUEUED)  # resumes first
        for job_id, _state in live:
            if job_id in self._running:
                continue
            if len(self._running) >= self._max_concurrent:
                return
            if not await self._locks.try_take(job_id):
                continue  # another trainer runs it
            cancel = asyncio.Event()
            task = asyncio.create_task(self._runner.run(job_id, cancel), name=f"job {job_id}")
            self._running[job_id] = (task, cancel)
            task.add_done_callback(lambda _, job_id=job_id: self._finished(job_id))

    def _finished(self, job_id: str) -> None:
        self._running.pop(job_id, None)
        unlock = asyncio.get_running_loop().create_task(self._locks.release(job_id))
        self._unlocking.add(unlock)
        unlock.add_done_callback(self._unlocking.discard)
        self._wake.set()

    async def _drop_connection(self) -> None:
        """Losing the lock connection loses every job's lock: stop them all here first."""
        for task, _ in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.gather(*(t for t, _ in self._running.values()), return_exceptions=True)
        await self._locks.close()
