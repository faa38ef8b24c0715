"""A training job as a pure state machine: events in, state out.

``evolve(job, event)`` folds one recorded event into the job; ``replay`` folds a whole
stream. The deciders (``decide_*``) take the current job and a command and return the
events to record, or raise when the command does not apply to the job as it is. Every
write goes through them inside one transaction with an expected stream version
(store/jobs.py), which is what fences a stale attempt: once attempt k+1 is recorded,
any event attempt k asks for (a checkpoint, an export, a registration) is refused.

States (``JobState``): QUEUED -> PREPARING -> TRAINING (one or more attempts) ->
REGISTERING -> SUCCEEDED, or FAILED / CANCELLING -> CANCELLED from any live state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from google.protobuf.message import Message

from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2
from libs.errors import Conflict, FailedPrecondition

S = message_pb2
TERMINAL = frozenset({S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED})
LIVE = frozenset(
    {
        S.JOB_STATE_QUEUED,
        S.JOB_STATE_PREPARING,
        S.JOB_STATE_TRAINING,
        S.JOB_STATE_REGISTERING,
        S.JOB_STATE_CANCELLING,
    }
)


class StaleAttempt(Conflict):
    """An attempt that is no longer the job's current one tried to record something."""


@dataclass(frozen=True)
class Checkpoint:
    """A recorded checkpoint: where training can resume from."""

    sha256: str
    """The manifest blob in the trainer's artifact root."""
    epoch: int
    """Epochs fully done."""
    step: int
    """Optimizer steps done."""
    batches_into_epoch: int
    """Batches of epoch ``epoch`` (0-based) already consumed."""


@dataclass(frozen=True)
class Job:
    """The state of one job, folded from its stream."""

    job_id: str
    version: int = 0
    """Stream version of the last event folded in (0: no such job)."""
    state: int = S.JOB_STATE_UNSPECIFIED
    spec: message_pb2.TrainingJobSpec = field(default_factory=message_pb2.TrainingJobSpec)
    spec_digest: str = ""
    labels_sha256: str = ""
    feature_service_version: int = 0
    code_revision: str = ""
    submitted_by: str = ""
    traceparent: str = ""
    """The submit call's trace: the job's spans join it."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    dataset: ev.DatasetPrepared | None = None
    attempts: int = 0
    attempt_id: str = ""
    """The current attempt ("" when none runs)."""
    attempt_history: tuple[ev.AttemptStarted, ...] = ()
    first_started_at: datetime | None = None
    """When the first attempt started (the job's timeout counts from here)."""
    checkpoint: Checkpoint | None = None
    epoch: int = 0
    step: int = 0
    last_epoch: ev.EpochCompleted | None = None
    evaluated: ev.JobEvaluated | None = None
    exported: ev.ModelExported | None = None
    model_version: int = 0
    failure_reason: str = ""
    cancel_reason: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def threads_per_process(self) -> int:
        return self.spec.resources.threads_per_process


def evolve(job: Job, event: Message, recorded_at: datetime, *, actor: str = "") -> Job:
    """``job`` after ``event`` (recorded at ``recorded_at``)."""
    job = replace(job, version=job.version + 1, updated_at=recorded_at)
    match event:
        case ev.JobSubmitted():
            return replace(
                job,
                state=S.JOB_STATE_QUEUED,
                spec=event.spec,
                spec_digest=event.spec_digest,
                labels_sha256=event.labels_sha256,
                feature_service_version=event.feature_service_version,
                code_revision=event.code_revision,
                submitted_by=actor,
                created_at=recorded_at,
            )
        case ev.JobQueued():
            return replace(job, state=S.JOB_STATE_QUEUED)
        case ev.PreparationStarted():
            return replace(job, state=_unless_cancelling(job, S.JOB_STATE_PREPARING))
        case ev.DatasetPrepared():
            return replace(
                job, dataset=event, feature_service_version=event.feature_service_version
            )
        case ev.AttemptStarted():
            state = S.JOB_STATE_CANCELLING if job.state == S.JOB_STATE_CANCELLING else None
            return replace(
                job,
                state=state or S.JOB_STATE_TRAINING,
                attempts=event.attempt,
                attempt_id=event.attempt_id,
                attempt_history=(*job.attempt_history, event),
                first_started_at=job.first_started_at or recorded_at,
            )
        case ev.EpochCompleted():
            return replace(job, epoch=event.epoch, step=event.step, last_epoch=event)
        case ev.CheckpointRecorded():
            checkpoint = Checkpoint(
                event.checkpoint_sha256, event.epoch, event.step, event.batches_into_epoch
            )
            return replace(job, checkpoint=checkpoint)
        case ev.AttemptFailed():
            return replace(job, attempt_id="")
        case ev.JobEvaluated():
            return replace(job, evaluated=event)
        case ev.ModelExported():
            return replace(
                job, exported=event, state=_unless_cancelling(job, S.JOB_STATE_REGISTERING)
            )
        case ev.ModelRegistered():
            return replace(job, model_version=event.version)
        case ev.JobSucceeded():
            return replace(job, state=S.JOB_STATE_SUCCEEDED, attempt_id="")
        case ev.JobFailed():
            return replace(
                job, state=S.JOB_STATE_FAILED, failure_reason=event.reason, attempt_id=""
            )
        case ev.CancelRequested():
            return replace(job, state=S.JOB_STATE_CANCELLING, cancel_reason=event.reason)
        case ev.JobCancelled():
            return replace(job, state=S.JOB_STATE_CANCELLED, attempt_id="")
    raise ValueError(f"a job cannot fold {type(event).__name__}")


def _unless_cancelling(job: Job, state: int) -> int:
    return S.JOB_STATE_CANCELLING if job.state == S.JOB_STATE_CANCELLING else state


def replay(job_id: str, events: list[tuple[Message, datetime, str, str]]) -> Job:
    """Fold (event, recorded_at, actor, traceparent) tuples from the start of a stream."""
    job = Job(job_id)
    for event, recorded_at, actor, traceparent in events:
        job = evolve(job, event, recorded_at, actor=actor)
        if isinstance(event, ev.JobSubmitted):
            job = replace(job, traceparent=traceparent)
    return job


# --- deciders: the events a command records, or why it cannot -----------------------------


def decide_preparing(job: Job, owner: str) -> list[Message]:
    """Leave the queue: this trainer owns the job and builds its data."""
    _require_live(job)
    if job.state != S.JOB_STATE_QUEUED:
        return []
    return [ev.PreparationStarted(owner=owner)]


def decide_dataset(job: Job, prepared: ev.DatasetPrepared) -> list[Message]:
    _require_live(job)
    if job.dataset is not None:
        raise Conflict(f"job {job.job_id} has its dataset already")
    return [prepared]


def decide_attempt(job: Job, started: ev.AttemptStarted) -> list[Message]:
    _require_live(job)
    if job.state == S.JOB_STATE_CANCELLING:
        raise FailedPrecondition(f"job {job.job_id} is being cancelled; no new attempt starts")
    if job.dataset is None:
        raise FailedPrecondition(f"job {job.job_id} has no dataset yet")
    if started.attempt != job.attempts + 1:
        raise Conflict(f"attempt {started.attempt} of {job.job_id} is not the next one")
    return [started]


def decide_from_attempt(job: Job, attempt_id: str, event: Message) -> list[Message]:
    """Progress of an attempt (epoch, checkpoint, evaluation, export, failure): fenced."""
    require_attempt(job, attempt_id)
    return [event]


def decide_registered(job: Job, attempt_id: str, registered: ev.ModelRegistered) -> list[Message]:
    if job.state == S.JOB_STATE_CANCELLING:
        # The version exists (registration cannot be undone); say so, and still cancel.
        return [registered]
    require_attempt(job, attempt_id)
    if job.exported is None:
        raise FailedPrecondition(f"job {job.job_id} has nothing exported to register")
    return [
        registered,
        ev.JobSucceeded(model_name=registered.model_name, version=registered.version),
    ]


def decide_failed(job: Job, reason: str, attempt_id: str = "") -> list[Message]:
    if job.terminal:
        return []
    if attempt_id:
        require_attempt(job, attempt_id)
    return [ev.JobFailed(reason=reason, attempt_id=attempt_id)]


def decide_cancel(job: Job, reason: str) -> list[Message]:
    """Cancel: at once when nothing runs (queued), else ask the owner to stop the workers."""
    if job.terminal or job.state == S.JOB_STATE_CANCELLING:
        return []
    if job.state == S.JOB_STATE_QUEUED:
        return [ev.CancelRequested(reason=reason), ev.JobCancelled(reason=reason)]
    return [ev.CancelRequested(reason=reason)]


def decide_cancelled(job: Job, stopped_at: datetime) -> list[Message]:
    if job.state != S.JOB_STATE_CANCELLING:
        return []
    cancelled = ev.JobCancelled(reason=job.cancel_reason)
    cancelled.workers_stopped_time.FromDatetime(stopped_at)
    return [cancelled]


def require_attempt(job: Job, attempt_id: str) -> None:
    if job.terminal or job.attempt_id != attempt_id:
        current = job.attempt_id or "none"
        raise StaleAttempt(
            f"attempt {attempt_id} of job {job.job_id} is not current (current: {current}, "
            f"state {S.JobState.Name(job.state)}); its progress is not recorded"
        )


def _require_live(job: Job) -> None:
    if job.version == 0:
        raise FailedPrecondition(f"no job {job.job_id}")
    if job.terminal:
        raise FailedPrecondition(f"job {job.job_id} has ended ({S.JobState.Name(job.state)})")


def to_proto(job: Job) -> message_pb2.TrainingJob:
    """The job as the API shows it."""
    proto = message_pb2.TrainingJob(
        job_id=job.job_id,
        spec=job.spec,
        state=job.state,  # type: ignore[arg-type]
        submitted_by=job.submitted_by,
        attempts=job.attempts,
        epoch=job.epoch,
        step=job.step,
        model_version=job.model_version,
        failure_reason=job.failure_reason,
        spec_digest=job.spec_digest,
        threads_per_process=job.threads_per_process,
    )
    if job.created_at is not None:
        proto.create_time.FromDatetime(job.created_at)
    if job.updated_at is not None:
        proto.update_time.FromDatetime(job.updated_at)
    if job.dataset is not None:
        proto.dataset_snapshot_id = job.dataset.dataset_snapshot_id
        proto.train_rows = job.dataset.train_rows
        proto.validation_rows = job.dataset.validation_rows
    if job.evaluated is not None:
        proto.metrics.update(job.evaluated.metrics)
        proto.baseline_metrics.update(job.evaluated.baseline_metrics)
    return proto
