"""The job state machine: events in, state out, and the fenced deciders."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2 as m
from libs.errors import FailedPrecondition
from services.trainer.domain import job as machine
from services.trainer.domain.job import Job, StaleAttempt, evolve

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def fold(*events: object) -> Job:
    job = Job("j1")
    for event in events:
        job = evolve(job, event, NOW)  # type: ignore[arg-type]
    return job


def training(attempt: str = "a1") -> Job:
    return fold(
        ev.JobSubmitted(job_id="j1", spec_digest="sha256:x"),
        ev.JobQueued(),
        ev.PreparationStarted(owner="me"),
        ev.DatasetPrepared(dataset_snapshot_id="sha256:d", train_rows=10, validation_rows=5),
        ev.AttemptStarted(attempt_id=attempt, attempt=1),
    )


def test_a_job_moves_through_its_states() -> None:
    job = fold(ev.JobSubmitted(job_id="j1"), ev.JobQueued())
    assert job.state == m.JOB_STATE_QUEUED and job.version == 2
    job = evolve(job, ev.PreparationStarted(), NOW)
    assert job.state == m.JOB_STATE_PREPARING
    job = training()
    assert job.state == m.JOB_STATE_TRAINING and job.attempt_id == "a1" and job.attempts == 1
    job = evolve(job, ev.EpochCompleted(attempt_id="a1", epoch=1, step=9), NOW)
    job = evolve(
        job, ev.CheckpointRecorded(attempt_id="a1", checkpoint_sha256="c", epoch=1, step=9), NOW
    )
    assert job.checkpoint == machine.Checkpoint("c", 1, 9, 0) and job.epoch == 1
    job = evolve(job, ev.JobEvaluated(metrics={"auc": 0.8}), NOW)
    job = evolve(job, ev.ModelExported(onnx_sha256="o"), NOW)
    assert job.state == m.JOB_STATE_REGISTERING
    for event in machine.decide_registered(job, "a1", ev.ModelRegistered(version=3)):
        job = evolve(job, event, NOW)
    assert job.state == m.JOB_STATE_SUCCEEDED and job.model_version == 3 and job.terminal
    assert machine.to_proto(job).metrics["auc"] == 0.8


def test_progress_of_a_stale_attempt_is_refused() -> None:
    job = training("a1")
    job = evolve(job, ev.AttemptFailed(attempt_id="a1", will_retry=True), NOW)
    job = evolve(job, ev.AttemptStarted(attempt_id="a2", attempt=2), NOW)
    late = ev.CheckpointRecorded(attempt_id="a1", checkpoint_sha256="orphan")
    with pytest.raises(StaleAttempt, match="a1"):
        machine.decide_from_attempt(job, "a1", late)
    with pytest.raises(StaleAttempt):
        machine.decide_registered(job, "a1", ev.ModelRegistered(version=1))
    assert machine.decide_from_attempt(job, "a2", ev.EpochCompleted(attempt_id="a2"))


def test_attempts_are_numbered_and_need_data() -> None:
    queued = fold(ev.JobSubmitted(job_id="j1"), ev.JobQueued())
    with pytest.raises(FailedPrecondition, match="no dataset"):
        machine.decide_attempt(queued, ev.AttemptStarted(attempt_id="a", attempt=1))
    with pytest.raises(Exception, match="not the next"):
        machine.decide_attempt(training(), ev.AttemptStarted(attempt_id="b", attempt=3))


def test_cancel_is_immediate_when_queued_and_asks_the_owner_otherwise() -> None:
    queued = fold(ev.JobSubmitted(job_id="j1"), ev.JobQueued())
    kinds = [type(e).__name__ for e in machine.decide_cancel(queued, "no")]
    assert kinds == ["CancelRequested", "JobCancelled"]
    running = training()
    assert [type(e).__name__ for e in machine.decide_cancel(running, "no")] == ["CancelRequested"]
    cancelling = evolve(running, ev.CancelRequested(reason="no"), NOW)
    assert cancelling.state == m.JOB_STATE_CANCELLING
    assert machine.decide_cancel(cancelling, "again") == []  # idempotent
    with pytest.raises(FailedPrecondition, match="being cancelled"):
        machine.decide_attempt(cancelling, ev.AttemptStarted(attempt_id="a2", attempt=2))
    done = evolve(cancelling, machine.decide_cancelled(cancelling, NOW)[0], NOW)
    assert done.state == m.JOB_STATE_CANCELLED and machine.decide_failed(done, "late") == []


def test_an_ended_job_takes_no_new_work() -> None:
    failed = evolve(training(), ev.JobFailed(reason="parity"), NOW)
    assert failed.failure_reason == "parity" and failed.attempt_id == ""
    with pytest.raises(FailedPrecondition, match="has ended"):
        machine.decide_preparing(failed, "me")
