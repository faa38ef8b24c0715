"""SIGKILL a worker, then separately the trainer service: the job resumes from its last
checkpoint (not from epoch 0) and exactly one version is registered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from services.trainer.launch.processes import attempt_processes
from tests.support.subprocesses import REPO_ROOT
from tests.trainer.helpers import DONE, Dataset, events, spec, submit, wait_for

# Small batches and a checkpoint every 50 steps: an epoch takes long enough (~0.1 s) that the
# kill lands mid-training, not after the last epoch (at batch 32 an epoch took 13 ms and the
# whole run was over before the first checkpoint event reached the test).
LONG = {"epochs": 20, "batchSize": 4, "learningRate": 0.005, "checkpointEverySteps": 50}


async def first_checkpoint(trainer: TrainerStub, job_id: str) -> rr.WatchTrainingJobResponse:
    async for event in trainer.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job_id)):
        if event.HasField("checkpointed"):
            return event
    raise AssertionError(f"job {job_id} ended without a checkpoint")


async def versions(registry: ModelRegistryStub, model_name: str) -> list[int]:
    page = await registry.ListModelVersions(reg_rr.ListModelVersionsRequest(model_name=model_name))
    return [v.version for v in page.model_versions]


def assert_resumed(history: list[rr.WatchTrainingJobResponse], reason: str) -> None:
    attempts = [e.started for e in history if e.HasField("started")]
    assert len(attempts) == 2, [a.reason for a in attempts]
    assert attempts[0].resume_checkpoint_sha256 == ""
    second = attempts[1]
    assert reason in second.reason, second.reason
    assert second.resume_checkpoint_sha256, "the second attempt must resume from a checkpoint"
    assert second.resume_epoch >= 1 or second.resume_step > 0, "it must not restart from epoch 0"
    checkpoints = [e.checkpointed for e in history if e.HasField("checkpointed")]
    resumed_from = next(
        c for c in checkpoints if c.checkpoint_sha256 == second.resume_checkpoint_sha256
    )
    assert resumed_from.attempt_id == attempts[0].attempt_id
    resumed_epochs = [
        e.epoch_completed.epoch
        for e in history
        if e.HasField("epoch_completed") and e.epoch_completed.attempt_id == second.attempt_id
    ]
    assert resumed_epochs[0] == second.resume_epoch + 1, "the workers continued where it stopped"
    epochs = [e.epoch_completed.epoch for e in history if e.HasField("epoch_completed")]
    assert epochs[-1] == LONG["epochs"]
    assert all(c.attempt_id in {a.attempt_id for a in attempts} for c in checkpoints)


async def test_sigkill_of_a_worker_resumes_from_the_checkpoint(
    trainer: TrainerStub, registry: ModelRegistryStub, dataset: Dataset
) -> None:
    job_id = await submit(trainer, spec(dataset, optimization=LONG))
    checkpoint = await first_checkpoint(trainer, job_id)
    workers = [
        p
        for p in attempt_processes(attempt_id=checkpoint.checkpointed.attempt_id)
        if "torch.distributed.run" not in p.cmdline()
    ]
    assert workers, "the attempt's worker process is running"
    os.kill(workers[0].pid, signal.SIGKILL)

    job = await wait_for(trainer, job_id, DONE, 180)

    assert job.state == message_pb2.JOB_STATE_SUCCEEDED, job.failure_reason
    history = await events(trainer, job_id)
    assert_resumed(history, "attempt 1 ended with exit code")
    assert [e.attempt_failed.will_retry for e in history if e.HasField("attempt_failed")] == [True]
    assert await versions(registry, dataset.model_name) == [job.model_version]


@asynccontextmanager
async def trainer_process(
    settings: LatheSettings, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """The trainer as its own OS process (so it can be SIGKILLed), SERVING when yielded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")]),
        LATHE_DATABASE_URL=settings.require_database_url(),
        LATHE_NATS_URL=settings.require_nats_url(),
        LATHE_NAMESPACE=settings.namespace,
        LATHE_HOME=str(settings.home),
        LATHE_SHUTDOWN_GRACE_S="1",
        **{f"LATHE_{n.value.upper()}_ADDR": settings.service_addr(n) for n in ServiceName},
    )
    with log.open("ab") as handle:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.trainer",
            env=env,
            cwd=REPO_ROOT,
            stdout=handle,
            stderr=handle,
        )
    try:
        async with grpc.aio.insecure_channel(settings.service_addr(ServiceName.TRAINER)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(300):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError(f"the trainer did not start; see {log}")
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


async def test_sigkill_of_the_trainer_service_resumes_the_job_after_restart(
    feature_store_host: ServiceHost,
    registry_host: ServiceHost,
    registry: ModelRegistryStub,
    dataset: Dataset,
    test_settings: LatheSettings,
    tmp_path: Path,
) -> None:
    log = tmp_path / "trainer.log"
    async with grpc.aio.insecure_channel(
        test_settings.service_addr(ServiceName.TRAINER)
    ) as channel:
        trainer = TrainerStub(channel)
        async with trainer_process(test_settings, log) as service:
            job_id = await submit(trainer, spec(dataset, optimization=LONG))
            checkpoint = await first_checkpoint(trainer, job_id)
            service.send_signal(signal.SIGKILL)
            await service.wait()
        first_attempt = checkpoint.checkpointed.attempt_id
        assert attempt_processes(attempt_id=first_attempt), (
            "torchrun outlives a SIGKILLed service (its own session): recovery must kill it"
        )

        async with trainer_process(test_settings, log):
            async for event in trainer.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job_id)):
                if event.HasField("started") and event.started.attempt == 2:
                    # Recovery killed attempt 1 before starting attempt 2.
                    assert not attempt_processes(attempt_id=first_attempt)
            job = await wait_for(trainer, job_id, DONE, 180)
            history = await events(trainer, job_id)

    assert job.state == message_pb2.JOB_STATE_SUCCEEDED, job.failure_reason
    assert_resumed(history, "the trainer restarted during attempt 1")
    assert not attempt_processes(attempt_id=first_attempt), "attempt 1's processes were killed"
    assert await versions(registry, dataset.model_name) == [job.model_version]
