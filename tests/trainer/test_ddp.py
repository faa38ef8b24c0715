"""DDP over gloo: two processes train as well as one, each rank on a disjoint shard."""

from __future__ import annotations

import asyncio

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from tests.trainer.helpers import DONE, Dataset, events, spec, submit, wait_for


async def test_two_gloo_processes_match_one_and_shard_disjointly(
    trainer: TrainerStub, dataset: Dataset
) -> None:
    opt = {"epochs": 3, "batchSize": 64, "learningRate": 0.01}
    one, two = await asyncio.gather(
        submit(trainer, spec(dataset, optimization=opt, resources={"processes": 1})),
        submit(trainer, spec(dataset, optimization=opt, resources={"processes": 2})),
    )

    single, double = await asyncio.gather(
        wait_for(trainer, one, DONE, 240), wait_for(trainer, two, DONE, 240)
    )

    assert single.state == double.state == message_pb2.JOB_STATE_SUCCEEDED, (
        single.failure_reason,
        double.failure_reason,
    )
    assert abs(single.metrics["auc"] - double.metrics["auc"]) <= 0.01, (
        single.metrics["auc"],
        double.metrics["auc"],
    )
    history = await events(trainer, two)
    started = next(e.started for e in history if e.HasField("started"))
    assert started.world_size == 2
    first_epoch = next(e.epoch_completed for e in history if e.HasField("epoch_completed"))
    assert len(first_epoch.rank_samples) == 2
    assert first_epoch.rank_samples[0] == first_epoch.rank_samples[1] > 0
    assert sum(first_epoch.rank_samples) >= double.train_rows - 1  # drop_last: at most 1 left out
    assert first_epoch.overlapping_samples == 0
