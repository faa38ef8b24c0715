"""Same spec, same data, same seed, same world size and threads: identical metrics."""

from __future__ import annotations

import asyncio

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from tests.trainer.helpers import DONE, Dataset, events, spec, submit, wait_for


async def test_same_spec_and_seed_twice_gives_identical_metrics(
    trainer: TrainerStub, dataset: Dataset
) -> None:
    job_spec = spec(dataset, optimization={"epochs": 2, "checkpointEverySteps": 5})
    first, second = await asyncio.gather(submit(trainer, job_spec), submit(trainer, job_spec))

    a, b = await asyncio.gather(wait_for(trainer, first, DONE), wait_for(trainer, second, DONE))

    assert a.state == b.state == message_pb2.JOB_STATE_SUCCEEDED, (
        a.failure_reason,
        b.failure_reason,
    )
    assert a.spec_digest == b.spec_digest and a.dataset_snapshot_id == b.dataset_snapshot_id
    assert dict(a.metrics) == dict(b.metrics)
    assert dict(a.baseline_metrics) == dict(b.baseline_metrics)
    assert a.threads_per_process == b.threads_per_process == 1
    started = [
        next(e.started for e in await events(trainer, job) if e.HasField("started"))
        for job in (first, second)
    ]
    assert [s.threads_per_process for s in started] == [1, 1]
