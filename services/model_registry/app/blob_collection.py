"""Deleting artifact blobs no version references: what failed registrations leave behind.

A registration stores its blobs first and records the version after, so a registration
that fails in between (a digest mismatch, a lost connection, a crash) leaves blobs nothing
points to, and a crashed upload leaves its partial file. Versions are never deleted, so a
blob that some version references is never collected. A blob written within the grace
period is kept: its registration may still be on its way to recording the version, and a
registration marks its blobs as just written right before the transaction that records
the version (failing with ABORTED if one was collected meanwhile), so the grace only has to
outlast the gap between that mark and the commit (the wait for the model's lock included)
and a collector's listing. Registries sharing an artifact root must share one
database (a blob only another database's versions reference would look orphaned here): the
first collection claims the root for its database and any other database's collector
refuses to run on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from opentelemetry import metrics

from libs.errors import FailedPrecondition
from services.model_registry.store.artifacts import ArtifactStore
from services.model_registry.store.queries import RegistryQueries

_log = logging.getLogger(__name__)
_meter = metrics.get_meter(__name__)
_blobs_deleted = _meter.create_counter(
    "lathe.model_registry.orphan_blobs_deleted",
    unit="{blob}",
    description="Artifact blobs no version referenced, deleted after the grace period.",
)
_bytes_freed = _meter.create_counter(
    "lathe.model_registry.orphan_blob_bytes_freed",
    unit="By",
    description="Bytes of artifact blobs no version referenced, deleted.",
)


@dataclass(frozen=True)
class CollectionReport:
    blobs_deleted: int
    bytes_freed: int
    partial_uploads_deleted: int
    blobs_kept: int
    """Referenced, or written within the grace period."""


async def collect_orphan_blobs(
    store: ArtifactStore, queries: RegistryQueries, *, grace_s: float, now: float | None = None
) -> CollectionReport:
    """Delete blobs no version references that were last written more than ``grace_s`` ago."""
    registry_id = await queries.registry_id()
    owner = await store.claim(registry_id)
    if owner != registry_id:
        raise FailedPrecondition(
            f"the artifact store belongs to registry database {owner}, not to this one "
            f"({registry_id}): its blobs may be referenced only there, so nothing is collected. "
            "Give each registry database its own LATHE_ARTIFACT_ROOT"
        )
    cutoff = (time.time() if now is None else now) - grace_s
    # A collector that stopped between moving a blob aside and judging it: put it back
    # and judge it again below (it may be one a registration just stored).
    await store.recover_interrupted_deletions()
    # Listed before the references are read: a blob committed after this point is not a
    # candidate, and one committed before it is judged by its mtime when deleted.
    stored = await store.blobs()
    referenced = await queries.referenced_digests()
    deleted, freed, kept = 0, 0, 0
    for blob in stored:
        if blob.sha256 in referenced or blob.modified_at > cutoff:
            kept += 1
            continue
        size = await store.delete_unless_written_since(blob.sha256, cutoff)
        if size is None:
            kept += 1
            continue
        deleted += 1
        freed += size
    partial = await store.delete_partial_uploads(cutoff)
    _blobs_deleted.add(deleted)
    _bytes_freed.add(freed)
    return CollectionReport(deleted, freed, partial, kept)


class OrphanBlobCollector:
    """Runs the collection every ``interval_s`` while the service runs."""

    def __init__(
        self,
        store: ArtifactStore,
        queries: RegistryQueries,
        *,
        interval_s: float,
        grace_s: float,
    ) -> None:
        self._store = store
        self._queries = queries
        self._interval_s = interval_s
        self._grace_s = grace_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                report = await collect_orphan_blobs(
                    self._store, self._queries, grace_s=self._grace_s
                )
            except Exception:  # a janitor: the next round retries; serving goes on
                _log.exception(
                    "orphan blob collection failed; retrying in %.0f s", self._interval_s
                )
            else:
                if report.blobs_deleted or report.partial_uploads_deleted:
                    _log.info(
                        "deleted %d orphan blob(s) (%d bytes) and %d partial upload(s)",
                        report.blobs_deleted,
                        report.bytes_freed,
                        report.partial_uploads_deleted,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
