"""Registering a job's export: exactly one model version per job, recorded by the job.

Two guards make it once. First the registry is asked for a version whose lineage names
the job (a job resumed after its trainer died between registering and recording
``registered`` finds its own). Then the version is registered under the job's client
request id (store/registry.py: ``trainer-job-<job id>``, the same from every attempt and
every owner), so a retry of a registration whose reply was lost, or a second owner past
the lookup at the same moment, gets the version the first registered, not a new one.

The registry being unreachable does not fail the job: the job stays ``registering`` and
the registration is sent again, with the same id, after a back-off (1 s doubling to
30 s) until the registry answers or the job is cancelled. Only the job's current attempt
may register (its export is the one recorded), checked just before the upload and again
when ``registered`` is recorded (domain/job.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lathe.model_registry.v1 import message_pb2 as reg
from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2
from libs.errors import Unavailable
from libs.eventstore import EventMetadata
from libs.sdk.model_registry import ArtifactUpload, VersionSpec
from services.trainer.app.ports import Registry
from services.trainer.domain import job as decide
from services.trainer.domain.job import Job
from services.trainer.store.blobs import BlobStore
from services.trainer.store.jobs import JobStore
from services.trainer.store.registry import FORMATS

_log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
_ARROW_DTYPES = {
    "double": reg.DATA_TYPE_FLOAT64,
    "float": reg.DATA_TYPE_FLOAT32,
    "int64": reg.DATA_TYPE_INT64,
    "int32": reg.DATA_TYPE_INT32,
    "bool": reg.DATA_TYPE_BOOL,
}


class CancelledWhileWaiting(Exception):
    """The job was cancelled while its registration waited for the registry."""


class Registrar:
    def __init__(
        self,
        jobs: JobStore,
        blobs: BlobStore,
        registry: Registry,
        metadata: EventMetadata,
        *,
        first_backoff_s: float = FIRST_BACKOFF_S,
    ) -> None:
        self._jobs = jobs
        self._blobs = blobs
        self._registry = registry
        self._metadata = metadata
        self._first_backoff_s = first_backoff_s

    async def register(self, job: Job, cancel: asyncio.Event) -> Job:
        """Register ``job``'s export (or find its version) and record ``registered``; the
        job as recorded. CancelledWhileWaiting if a cancel came while the registry was
        unreachable; StaleAttempt if the job's attempt is no longer current."""
        assert job.exported is not None
        attempt_id, spec, exported = job.attempt_id, job.spec, job.exported
        version = await self._answered(
            lambda: self._registry.version_of_job(spec.model_name, job.job_id), job, cancel
        )
        found = version > 0
        if not found:
            decide.require_attempt(await self._jobs.load(job.job_id), attempt_id)
            files = {
                "model.onnx": exported.onnx_sha256,
                "weights.safetensors": exported.weights_sha256,
                "preprocessing.json": exported.preprocessing_sha256,
                "signature.json": exported.signature_sha256,
            }
            artifacts = {
                name: ArtifactUpload(FORMATS[name], content=self._blobs.get_bytes(sha))
                for name, sha in files.items()
            }
            signature = json.loads(self._blobs.get_bytes(exported.signature_sha256))
            version_spec = version_spec_of(job, signature)
            version = await self._answered(
                lambda: self._registry.register(version_spec, artifacts, job_id=job.job_id),
                job,
                cancel,
            )
        registered = ev.ModelRegistered(
            attempt_id=attempt_id, model_name=spec.model_name, version=version, found_existing=found
        )
        return await self._jobs.record(
            job.job_id,
            lambda j: decide.decide_registered(j, attempt_id, registered),
            self._metadata,
        )

    async def _answered(
        self, call: Callable[[], Awaitable[T]], job: Job, cancel: asyncio.Event
    ) -> T:
        """``call()`` until the registry answers it; safe to repeat (a lookup, or a
        registration under the job's request id)."""
        backoff = self._first_backoff_s
        while True:
            try:
                return await call()
            except Unavailable as error:
                _log.warning("job %s: %s; registering again in %.0f s", job.job_id, error, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), backoff)
            current = await self._jobs.load(job.job_id)
            if cancel.is_set() or current.state == message_pb2.JOB_STATE_CANCELLING:
                raise CancelledWhileWaiting(job.job_id)
            backoff = min(backoff * 2, MAX_BACKOFF_S)


def version_spec_of(job: Job, signature: dict[str, Any]) -> VersionSpec:
    """What the registry records about the job's version besides its files: the same for
    every attempt and owner of the job (its registration request's digest covers it)."""
    assert job.dataset is not None and job.evaluated is not None
    spec = job.spec
    metrics = dict(job.evaluated.metrics)
    metrics.update({f"baseline.lightgbm.{k}": v for k, v in job.evaluated.baseline_metrics.items()})
    metrics = {k: v for k, v in metrics.items() if v == v}  # NaN (one class only) is not a metric
    tags = {
        **dict(spec.tags),
        "training_job_id": job.job_id,
        "spec_digest": job.spec_digest,
        "model_family": spec.model.family,
        "world_size": str(spec.resources.processes),
        "threads_per_process": str(spec.resources.threads_per_process),
        "seed": str(spec.seed),
    }
    return VersionSpec(
        model_name=spec.model_name,
        description=spec.description or f"{spec.model.family} trained by job {job.job_id}",
        signature=reg.Signature(
            inputs=[
                reg.TensorSpec(
                    name=i["name"], dtype=_ARROW_DTYPES.get(i["arrow_type"], reg.DATA_TYPE_STRING)
                )
                for i in signature["inputs"]
            ],
            outputs=[reg.TensorSpec(name="probability", dtype=reg.DATA_TYPE_FLOAT32, shape=[-1])],
        ),
        metrics=metrics,
        tags=tags,
        lineage=reg.Lineage(
            training_job_id=job.job_id,
            dataset_snapshot_id=job.dataset.dataset_snapshot_id,
            feature_service=spec.feature_service,
            feature_service_version=str(job.dataset.feature_service_version),
            code_revision=job.code_revision,
        ),
    )
