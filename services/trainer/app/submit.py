"""Submitting a job: every check first, then the label set frozen, then one append.

Nothing is recorded unless every check passed: an unknown feature service (NOT_FOUND), a
version that is not the latest, an unknown model (NOT_FOUND), a label query Postgres
refuses or that returns nothing, a split with an empty side (FAILED_PRECONDITION). The
labels the query returned are stored as an Arrow blob (content-addressed: a failed
submit leaves at most an unreferenced file) and the job's first two events, ``submitted``
and ``queued``, are appended together.

A submit with a client request id is recorded with it, in the transaction that appends
those events (docs/adr/0015-client-request-ids.md). A retry whose first attempt was
applied is answered with the first attempt's job before any check or query runs; one
that overlaps its first attempt waits for it at the append and gets its job. The queue
limit is checked before the label query (to fail fast) and again, authoritatively, after
the id is claimed in the transaction that appends. (A retry that the early check refuses
in the instant its first attempt commits gets UNAVAILABLE, which clients retry: the next
try is answered from the record.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pyarrow as pa
from uuid6 import uuid7

from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2
from libs.db import transaction
from libs.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from libs.eventstore import ClientRequest, EventMetadata, RequestLog
from services.trainer.app.ports import Catalog, Labels, Registry
from services.trainer.domain.job import to_proto
from services.trainer.domain.spec import ValidSpec
from services.trainer.store.blobs import BlobStore
from services.trainer.store.jobs import JobStore


class Submitter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        jobs: JobStore,
        blobs: BlobStore,
        catalog: Catalog,
        registry: Registry,
        labels: Labels,
        requests: RequestLog,
        *,
        max_queued: int,
        code_revision: str,
        on_queued: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._jobs = jobs
        self._blobs = blobs
        self._catalog = catalog
        self._registry = registry
        self._labels = labels
        self._requests = requests
        self._max_queued = max_queued
        self._code_revision = code_revision
        self._on_queued = on_queued

    async def submit(
        self, spec: ValidSpec, metadata: EventMetadata, request: ClientRequest | None = None
    ) -> message_pb2.TrainingJob:
        """Queue a job; with a client ``request``, a retry gets the job its first call queued."""
        replayed = await self._requests.replay(request, message_pb2.TrainingJob)
        if replayed is not None:
            return replayed
        self._check_queue(await self._jobs.queued())  # before the label query: fail fast
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
        _check_sequence_views(spec, service.features)
        if not await self._registry.model_exists(spec.model_name):
            raise NotFound(
                f"no model named {spec.model_name!r} in the model registry; create it first "
                "(CreateModel) so the trained version has somewhere to go"
            )
        labels = await self._labels.read(spec.labels, spec.split, service.join_keys)
        labels_sha = await asyncio.to_thread(self._blobs.put_bytes, _ipc(labels))
        sides = labels.column("__split").to_pylist()
        job_id = str(uuid7())
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
        async with transaction(self._pool) as conn:
            job = await self._requests.once(
                conn,
                request,
                message_pb2.TrainingJob,
                lambda: self._queue(conn, submitted, metadata),
            )
        self._on_queued()
        return job

    async def _queue(
        self, conn: asyncpg.Connection, submitted: ev.JobSubmitted, metadata: EventMetadata
    ) -> message_pb2.TrainingJob:
        queued = await self._jobs.queued(conn)
        self._check_queue(queued)
        job = await self._jobs.create(
            conn, submitted.job_id, [submitted, ev.JobQueued(queue_position=queued)], metadata
        )
        return to_proto(job)

    def _check_queue(self, queued: int) -> None:
        if queued >= self._max_queued:
            raise Unavailable(
                f"the training queue is full ({queued} jobs waiting, at most {self._max_queued}); "
                "retry later or cancel queued jobs (lathe train list --state queued)"
            )


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _check_sequence_views(spec: ValidSpec, references: tuple[str, ...]) -> None:
    """Each sequence feature's view must be one the feature service reads (whether the
    feature is a list is known once the training set is built: app/data.py)."""
    views = {r.split(":", 1)[0].split("@", 1)[0] for r in references}
    for i, sequence in enumerate(spec.sequences):
        for feature in sequence.features:
            if feature.split(":", 1)[0].split("@", 1)[0] not in views:
                raise InvalidArgument(
                    f"spec.model.sequences[{i}].features: {feature!r} is not served by feature "
                    f"service {spec.feature_service!r} (it reads {list(references)}); name its "
                    "list features as 'view:feature'"
                )
