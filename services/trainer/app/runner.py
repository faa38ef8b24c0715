"""One job's run, from the queue to a registered version, by the trainer process that owns it.

``JobRunner.run`` is idempotent over the job's recorded state, so the same code starts a
fresh job and recovers one whose previous owner died: it kills whatever processes of the
job still run, builds the data if no ``DatasetPrepared`` is recorded, starts attempts
(each from the last recorded checkpoint) until one exports, and registers the export
exactly once. Every event of an attempt is recorded through the fenced deciders of
domain/job.py: a stale attempt records nothing.

The whole run is one trace, continued from the submit call's: data (the feature-store
call inside), one span per attempt with a span per epoch, export, registration (the
registry calls inside).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from uuid6 import uuid7

from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2
from libs.errors import LatheError
from libs.eventstore import EventMetadata
from libs.telemetry import context_from_traceparent
from services.trainer.app.data import prepare
from services.trainer.app.ports import Catalog, Features, Registry
from services.trainer.app.progress_reader import ProgressReader
from services.trainer.app.registration import CancelledWhileWaiting, Registrar
from services.trainer.config import TrainerSettings
from services.trainer.domain import job as decide
from services.trainer.domain.families import family
from services.trainer.domain.job import Job, StaleAttempt
from services.trainer.domain.plan import WorkerPlan
from services.trainer.launch.base import Launcher, RunningAttempt
from services.trainer.launch.processes import kill_attempt
from services.trainer.store.blobs import BlobStore
from services.trainer.store.jobs import JobStore

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_STATE_CHECK_S = 1.0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended."""

    kind: str
    """finished, fatal, crashed, cancelled, timed_out, stale."""
    message: str = ""
    result: dict[str, Any] | None = None


class JobRunner:
    def __init__(
        self,
        jobs: JobStore,
        blobs: BlobStore,
        features: Features,
        catalog: Catalog,
        registry: Registry,
        launchers: Mapping[str, Launcher],
        settings: TrainerSettings,
        *,
        owner: str,
    ) -> None:
        self._jobs = jobs
        self._blobs = blobs
        self._features = features
        self._catalog = catalog
        self._launchers = launchers
        self._settings = settings
        self._owner = owner
        self._meta = EventMetadata(actor="trainer")
        self._registrar = Registrar(jobs, blobs, registry, self._meta)

    async def run(self, job_id: str, cancel: asyncio.Event) -> None:
        job = await self._jobs.load(job_id)
        if job.terminal:
            return
        parent = context_from_traceparent(job.traceparent)
        with _tracer.start_as_current_span(
            "trainer.job",
            context=parent,
            attributes={"lathe.job_id": job_id, "lathe.model_name": job.spec.model_name},
        ):
            try:
                await self._drive(job, cancel)
            except asyncio.CancelledError:
                # The service is stopping: stop this job's workers; the job stays live and
                # the next trainer to start resumes it from its last checkpoint.
                await asyncio.shield(self._kill(job_id))
                raise
            except StaleAttempt as stale:
                # Another owner moved the job on; this process's attempt was killed where it
                # was noticed (the job's other processes are not ours to kill).
                _log.warning("job %s: %s", job_id, stale)
            except LatheError as error:
                await self._fail(job_id, str(error))
            except Exception as error:
                _log.exception("job %s failed", job_id)
                await self._fail(job_id, f"{type(error).__name__}: {error}")

    async def _drive(self, job: Job, cancel: asyncio.Event) -> None:
        reason = "first attempt"
        if job.attempts:
            killed = await self._kill(job.job_id)
            reason = (
                f"the trainer restarted during attempt {job.attempts} "
                f"({killed} leftover processes killed)"
            )
        if job.state == message_pb2.JOB_STATE_CANCELLING:
            await self._cancelled(job.job_id)
            return
        job = await self._jobs.record(
            job.job_id, lambda j: decide.decide_preparing(j, self._owner), self._meta
        )
        if job.dataset is None:
            with _tracer.start_as_current_span("trainer.data"):
                prepared = await prepare(job, self._blobs, self._features, self._catalog)
            job = await self._jobs.record(
                job.job_id, lambda j: decide.decide_dataset(j, prepared), self._meta
            )
        if job.exported is None:
            if not await self._train(job.job_id, cancel, reason):
                return
            job = await self._jobs.load(job.job_id)
        if job.state == message_pb2.JOB_STATE_CANCELLING or cancel.is_set():
            await self._cancelled(job.job_id)
            return
        await self._register(job, cancel)

    async def _train(self, job_id: str, cancel: asyncio.Event, reason: str) -> bool:
        """Attempts until one exports (True) or the job ends otherwise (False)."""
        while True:
            job = await self._jobs.load(job_id)
            if job.state == message_pb2.JOB_STATE_CANCELLING or cancel.is_set():
                await self._cancelled(job_id)
                return False
            if job.attempts >= self._settings.max_attempts:
                await self._fail(
                    job_id, f"gave up after {job.attempts} attempts; the last: {reason}"
                )
                return False
            outcome = await self._attempt(job, cancel, reason)
            number = job.attempts + 1
            if outcome.kind == "finished":
                assert outcome.result is not None
                await self._record_result(job_id, outcome.result)
                return True
            if outcome.kind == "crashed":
                retry = number < self._settings.max_attempts
                failed = ev.AttemptFailed(
                    attempt_id=outcome.result["attempt_id"] if outcome.result else "",
                    reason=outcome.message,
                    will_retry=retry,
                )
                await self._jobs.record(
                    job_id,
                    lambda j, failed=failed: decide.decide_from_attempt(
                        j, failed.attempt_id, failed
                    ),
                    self._meta,
                )
                reason = f"attempt {number} {outcome.message}"
                continue
            if outcome.kind == "cancelled":
                await self._cancelled(job_id)
            elif outcome.kind in ("fatal", "timed_out"):
                await self._fail(job_id, outcome.message)
            return False

    async def _attempt(self, job: Job, cancel: asyncio.Event, reason: str) -> Outcome:
        assert job.dataset is not None
        spec = job.spec
        attempt_id, number = str(uuid7()), job.attempts + 1
        attempt_dir = self._blobs.root / "attempts" / job.job_id / attempt_id
        attempt_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = job.checkpoint
        plan = WorkerPlan(
            job_id=job.job_id,
            attempt_id=attempt_id,
            artifact_root=str(self._blobs.root),
            attempt_dir=str(attempt_dir),
            dataset_sha256=job.dataset.dataset_sha256,
            preprocessing_sha256=job.dataset.preprocessing_sha256,
            family=spec.model.family,
            hyperparameters=family(spec.model.family).resolve(_struct(spec.model.hyperparameters)),
            epochs=spec.optimization.epochs,
            batch_size=spec.optimization.batch_size,
            learning_rate=spec.optimization.learning_rate,
            weight_decay=spec.optimization.weight_decay,
            checkpoint_every_steps=spec.optimization.checkpoint_every_steps,
            seed=spec.seed,
            threads_per_process=spec.resources.threads_per_process,
            device=spec.resources.device,
            resume_checkpoint_sha256=checkpoint.sha256 if checkpoint else "",
        )
        plan_path = attempt_dir / "plan.json"
        plan_path.write_text(plan.to_json())
        launcher = self._launchers[spec.resources.launcher]
        running = await launcher.start(
            job_id=job.job_id,
            attempt_id=attempt_id,
            plan_path=plan_path,
            processes=spec.resources.processes,
            threads=spec.resources.threads_per_process,
        )
        started = ev.AttemptStarted(
            attempt_id=attempt_id,
            attempt=number,
            reason=reason,
            resume_checkpoint_sha256=checkpoint.sha256 if checkpoint else "",
            resume_epoch=checkpoint.epoch if checkpoint else 0,
            resume_step=checkpoint.step if checkpoint else 0,
            world_size=spec.resources.processes,
            threads_per_process=spec.resources.threads_per_process,
            launcher=launcher.name,
            process_group=running.process_group,
            host=socket.gethostname(),
        )
        try:
            job = await self._jobs.record(
                job.job_id, lambda j: decide.decide_attempt(j, started), self._meta
            )
        except BaseException:
            await running.kill()
            raise
        with _tracer.start_as_current_span(
            f"trainer.attempt {number}",
            attributes={"lathe.attempt_id": attempt_id, "lathe.resume_epoch": started.resume_epoch},
        ):
            outcome = await self._supervise(job, plan, running, cancel)
        if outcome.kind == "crashed":
            return Outcome("crashed", outcome.message, {"attempt_id": attempt_id})
        return outcome

    async def _supervise(
        self, job: Job, plan: WorkerPlan, running: RunningAttempt, cancel: asyncio.Event
    ) -> Outcome:
        timeout_s = job.spec.resources.timeout.ToTimedelta().total_seconds()
        started = job.first_started_at or datetime.now(UTC)
        deadline = started.timestamp() + timeout_s
        reader = ProgressReader(plan.progress_path)
        ended = asyncio.ensure_future(running.wait())
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        last_check = time.monotonic()
        try:
            while True:
                await asyncio.wait({ended}, timeout=self._settings.poll_interval_s)
                for line in reader.new_lines():
                    if line["event"] == "result":
                        result = line
                    elif line["event"] == "error":
                        error = line
                    else:
                        await self._record_progress(job.job_id, plan.attempt_id, line)
                if ended.done():
                    break
                if time.monotonic() - last_check > _STATE_CHECK_S:
                    last_check = time.monotonic()
                    current = await self._jobs.load(job.job_id)
                    if current.state == message_pb2.JOB_STATE_CANCELLING:
                        cancel.set()
                if cancel.is_set():
                    await running.kill()
                    return Outcome("cancelled")
                if time.time() > deadline:
                    await running.kill()
                    return Outcome("timed_out", f"timed out after {timeout_s:g} s of training")
        except StaleAttempt:
            await running.kill()
            return Outcome("stale")
        finally:
            if not ended.done():
                ended.cancel()
        code = ended.result()
        await running.kill()  # a crashed rank's peers: make sure nothing of it lingers
        if code == 0 and result is not None:
            return Outcome("finished", result=result)
        if error is not None and error.get("fatal"):
            return Outcome("fatal", str(error["message"]))
        detail = f": {str(error['message']).strip().splitlines()[-1]}" if error else ""
        return Outcome("crashed", f"ended with exit code {code}{detail}")

    async def _record_progress(self, job_id: str, attempt_id: str, line: dict[str, Any]) -> None:
        if line["event"] == "epoch":
            event: Any = ev.EpochCompleted(
                attempt_id=attempt_id,
                epoch=line["epoch"],
                step=line["step"],
                train_loss=line["train_loss"],
                validation_auc=line["validation_auc"],
                validation_log_loss=line["validation_log_loss"],
                samples_per_second=line["samples_per_second"],
                rank_samples=line["rank_samples"],
                overlapping_samples=line["overlapping_samples"],
                seconds=line["seconds"],
            )
            begin = int(line["started_at"] * 1e9)
            span = _tracer.start_span(
                f"trainer.epoch {line['epoch']}",
                start_time=begin,
                attributes={
                    "lathe.train_loss": line["train_loss"],
                    "lathe.validation_auc": line["validation_auc"],
                },
            )
            span.end(end_time=begin + int(line["seconds"] * 1e9))
        elif line["event"] == "checkpoint":
            event = ev.CheckpointRecorded(
                attempt_id=attempt_id,
                checkpoint_sha256=line["sha256"],
                epoch=line["epoch"],
                step=line["step"],
                batches_into_epoch=line["batches_into_epoch"],
            )
        else:
            return
        await self._jobs.record(
            job_id, lambda j: decide.decide_from_attempt(j, attempt_id, event), self._meta
        )

    async def _record_result(self, job_id: str, result: dict[str, Any]) -> None:
        job = await self._jobs.load(job_id)
        attempt_id = job.attempt_id
        evaluated = ev.JobEvaluated(
            attempt_id=attempt_id,
            metrics=result["metrics"],
            baseline_metrics=result["baseline_metrics"],
            validation_rows=result["validation_rows"],
        )
        exported = ev.ModelExported(
            attempt_id=attempt_id,
            onnx_sha256=result["onnx_sha256"],
            weights_sha256=result["weights_sha256"],
            preprocessing_sha256=result["preprocessing_sha256"],
            signature_sha256=result["signature_sha256"],
            parity_max_abs_diff=result["parity_max_abs_diff"],
            opset=result["opset"],
        )
        with _tracer.start_as_current_span(
            "trainer.export", attributes={"lathe.parity_max_abs_diff": exported.parity_max_abs_diff}
        ):
            await self._jobs.record(
                job_id,
                lambda j: (
                    decide.decide_from_attempt(j, attempt_id, evaluated)
                    + decide.decide_from_attempt(j, attempt_id, exported)
                ),
                self._meta,
            )

    async def _register(self, job: Job, cancel: asyncio.Event) -> None:
        with _tracer.start_as_current_span(
            "trainer.register", attributes={"lathe.job_id": job.job_id}
        ):
            try:
                job = await self._registrar.register(job, cancel)
            except CancelledWhileWaiting:
                await self._cancelled(job.job_id)
                return
        if job.state == message_pb2.JOB_STATE_CANCELLING:
            await self._cancelled(job.job_id)

    async def _cancelled(self, job_id: str) -> None:
        await self._kill(job_id)
        stopped = datetime.now(UTC)
        await self._jobs.record(job_id, lambda j: decide.decide_cancelled(j, stopped), self._meta)

    async def _fail(self, job_id: str, reason: str) -> None:
        await self._kill(job_id)
        stopped = datetime.now(UTC)

        def failed_unless_cancelling(job: Job) -> list[Any]:
            # A job being cancelled ends cancelled, whatever else went wrong on the way
            # (e.g. an attempt refused because the cancel was recorded first).
            if job.state == message_pb2.JOB_STATE_CANCELLING:
                return decide.decide_cancelled(job, stopped)
            return decide.decide_failed(job, reason)

        try:
            await self._jobs.record(job_id, failed_unless_cancelling, self._meta)
        except Exception:
            _log.exception("could not record job %s as failed (%s)", job_id, reason)

    async def _kill(self, job_id: str) -> int:
        return await kill_attempt(job_id=job_id, timeout_s=self._settings.kill_timeout_s)


def _struct(value: Any) -> dict[str, Any]:
    return MessageToDict(value)
