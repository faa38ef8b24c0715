"""Cancel stops the workers within seconds and records the job cancelled."""

from __future__ import annotations

import asyncio
import time

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from services.trainer.launch.processes import attempt_processes
from tests.trainer.helpers import DONE, Dataset, events, spec, submit, wait_for


async def test_cancel_stops_the_workers_within_seconds(
    trainer: TrainerStub, dataset: Dataset
) -> None:
    job_id = await submit(trainer, spec(dataset, optimization={"epochs": 500, "batchSize": 16}))
    async for event in trainer.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job_id)):
        if event.HasField("epoch_completed"):
            break
    assert attempt_processes(job_id=job_id), "the workers are running"

    asked = time.monotonic()
    await trainer.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id=job_id, reason="wrong spec"))
    job = await wait_for(trainer, job_id, DONE, 30)
    took = time.monotonic() - asked

    assert job.state == message_pb2.JOB_STATE_CANCELLED
    assert took < 5, f"cancel took {took:.1f} s"
    assert not attempt_processes(job_id=job_id), "no worker of the job is left"
    kinds = [e.WhichOneof("event") for e in await events(trainer, job_id)]
    assert "cancel_requested" in kinds and kinds[-1] == "cancelled"
    assert "registered" not in kinds
    again = await trainer.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id=job_id))
    assert again.job.state == message_pb2.JOB_STATE_CANCELLED  # idempotent
    await asyncio.sleep(0)


async def test_cancel_of_a_queued_job_is_immediate(trainer: TrainerStub, dataset: Dataset) -> None:
    job_ids = [await submit(trainer, spec(dataset, optimization={"epochs": 500})) for _ in range(3)]
    queued = job_ids[-1]  # two run (max_concurrent_jobs), the third waits
    cancelled = await trainer.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id=queued))
    assert cancelled.job.state == message_pb2.JOB_STATE_CANCELLED
    for job_id in job_ids[:2]:
        await trainer.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id=job_id))
    for job_id in job_ids:
        assert (await wait_for(trainer, job_id, DONE, 30)).state == message_pb2.JOB_STATE_CANCELLED
