"""Submitting a job: every check first, then the label set frozen, then one append.

Nothing is recorded unless every check passed: an unknown feature service (NOT_FOUND), a
version that is not the latest, an unknown model (NOT_FOUND), a label query Postgres
refuses or that returns nothing, a split with an empty side (FAILED_PRECONDITION). The
labels the query returned are stored as an Arrow blob (content-addressed: a failed
submit leaves at most an unreferenced file) and the job's first two events, ``submitted``
and ``queued``, are appended together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from uuid import UUID, uuid5

import pyarrow as pa
from uuid6 import uuid7

from lathe.trainer.v1 import events_pb2 as ev
from libs.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound, Unavailable
from libs.eventstore import EventMetadata
from services.trainer.app.ports import Catalog, Labels, Registry
from services.trainer.domain.job import Job
from services.trainer.domain.spec import ValidSpec
from services.trainer.store.blobs import BlobStore
from services.trainer.store.jobs import JobStore

_REQUESTS = UUID("6f1b1c2e-6a57-4a8e-9d0b-7472a1e1b001")
"""Namespace of job ids derived from client request ids (``x-request-id``)."""


class Submitter:
    def __init__(
        self,
        jobs: JobStore,
        blobs: BlobStore,
        catalog: Catalog,
        registry: Registry,
        labels: Labels,
        *,
        max_queued: int,
        code_revision: str,
        on_queued: Callable[[], None],
    ) -> None:
        self._jobs = jobs
        self._blobs = blobs
        self._catalog = catalog
        self._registry = registry
        self._labels = labels
        self._max_queued = max_queued
        self._code_revision = code_revision
        self._on_queued = on_queued

    async def submit(self, spec: ValidSpec, metadata: EventMetadata, request_id: str = "") -> Job:
        """Queue a job; with a client ``request_id``, a retry returns the job it created."""
        job_id = str(uuid5(_REQUESTS, request_id)) if request_id else str(uuid7())
        if request_id:
            existing = await self._jobs.load(job_id)
            if existing.version:
                if existing.spec_digest != spec.digest:
                    raise AlreadyExists(
                        f"request id {request_id!r} already submitted job {job_id} with another "
                        "spec; use a new request id for a new job"
                    )
                return existing
        queued = await self._jobs.queued()
        if queued >= self._max_queued:
            raise Unavailable(
                f"the training queue is full ({queued} jobs waiting, at most {self._max_queued}); "
                "retry later or cancel queued jobs (lathe train list --state queued)"
            )
        service = await self._catalog.feature_service(spec.feature_service)
        if service is None:
            raise NotFound(
                f"no feature service named {spec.feature_service!r} in the feature store; "
                "apply it first (lathe features apply ...) or fix the name"
            )
        wanted = spec.feature_service_version
        if wanted and wanted != service.version:
            raise FailedPrecondition(
                f"feature service {spec.feature_service!r} is at version {service.version}, and "
                f"training sets are built from the latest version; set feature_service_version "
                f"to {service.version} (or 0 for the latest)"
            )
        if not await self._registry.model_exists(spec.model_name):
            raise NotFound(
                f"no model named {spec.model_name!r} in the model registry; create it first "
                "(CreateModel) so the trained version has somewhere to go"
            )
        labels = await self._labels.read(spec.labels, spec.split, service.join_keys)
        labels_sha = await asyncio.to_thread(self._blobs.put_bytes, _ipc(labels))
        sides = labels.column("__split").to_pylist()
        submitted = ev.JobSubmitted(
            job_id=job_id,
            spec=spec.proto,
            spec_digest=spec.digest,
            labels_sha256=labels_sha,
            label_rows=labels.num_rows,
            train_label_rows=sides.count(0),
            validation_label_rows=sides.count(1),
            feature_service_version=service.version,
            code_revision=self._code_revision,
        )
        try:
            job = await self._jobs.create(
                job_id, [submitted, ev.JobQueued(queue_position=queued)], metadata
            )
        except Conflict:
            if request_id:  # the same request, retried concurrently: it won
                return await self.submit(spec, metadata, request_id)
            raise
        self._on_queued()
        return job


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
