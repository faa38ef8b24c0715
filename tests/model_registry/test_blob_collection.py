"""Blobs no version references are deleted after the grace period; referenced ones never."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from libs.errors import Conflict, FailedPrecondition
from libs.eventstore import EventMetadata, EventStore, RequestLog
from services.model_registry.app.blob_collection import collect_orphan_blobs
from services.model_registry.app.commands import NewVersion, RegistryCommands
from services.model_registry.app.uploads import DeclaredArtifact
from services.model_registry.service import SPEC
from services.model_registry.store.artifacts import BlobRef, BlobWriter, LocalArtifactStore
from services.model_registry.store.queries import RegistryQueries
from tests.model_registry.helpers import new_model, status_of
from tests.support import registry_client as client
from tests.support.hosting import hosted

HOUR = 3600.0


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def _failed_registration(stub: ModelRegistryStub, name: str, content: bytes) -> None:
    """A registration whose blob is stored but whose version is never recorded."""
    meta = client.metadata(name)
    meta.artifacts[0].sha256 = _digest(b"what the client meant to send")
    code, _ = await status_of(
        stub.RegisterModelVersion(client.upload_stream(meta, {"model.onnx": [content]}))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def _age(path: os.PathLike[str], seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_orphans_past_the_grace_period_go_and_everything_else_stays(
    registry: ModelRegistryStub, test_settings: LatheSettings, db_pool: asyncpg.Pool
) -> None:
    store = LocalArtifactStore(test_settings.artifact_dir)
    name = await new_model(registry)
    kept_content, orphan, fresh_orphan = (f"{what}-{uuid.uuid4()}".encode() for what in "kof")
    version = await client.register(registry, name, content=kept_content)
    await _failed_registration(registry, name, orphan)
    await _failed_registration(registry, name, fresh_orphan)
    crashed_upload = test_settings.artifact_dir / "incoming" / "crashed.part"
    crashed_upload.write_bytes(b"half an upload")
    for path in (store.path_of(_digest(kept_content)), store.path_of(_digest(orphan))):
        _age(path, 2 * HOUR)
    _age(crashed_upload, 2 * HOUR)

    report = await collect_orphan_blobs(store, RegistryQueries(db_pool), grace_s=HOUR)

    assert (report.blobs_deleted, report.bytes_freed) == (1, len(orphan))
    assert (report.partial_uploads_deleted, report.blobs_kept) == (1, 2)
    assert not store.path_of(_digest(orphan)).exists()
    assert not crashed_upload.exists()
    assert store.path_of(_digest(fresh_orphan)).exists(), "collected within the grace period"
    _, received_sha256, _ = await client.download(registry, name, version.version, "model.onnx")
    assert received_sha256 == _digest(kept_content)


async def test_a_blob_written_again_before_its_deletion_is_kept(
    test_settings: LatheSettings,
) -> None:
    """The collector judges the file it holds, not what it listed: a registration storing
    the same content meanwhile keeps it."""
    store = LocalArtifactStore(test_settings.artifact_dir)
    content = f"orphan-{uuid.uuid4()}".encode()
    writer = store.writer()
    await writer.write(content)
    blob = await writer.commit()
    _age(store.path_of(blob.sha256), 2 * HOUR)
    cutoff = time.time() - HOUR
    (listed,) = [b for b in await store.blobs() if b.sha256 == blob.sha256]
    assert listed.modified_at <= cutoff

    again = store.writer()  # a new registration uploads the same bytes
    await again.write(content)
    await again.commit()

    assert await store.delete_unless_written_since(blob.sha256, cutoff) is None
    assert await store.verify(blob.sha256) == blob


async def test_the_running_registry_collects_orphans_in_the_background(
    test_settings: LatheSettings,
) -> None:
    settings = test_settings.model_copy(
        update={
            "model_registry_blob_collection_interval_s": 0.2,
            "model_registry_blob_grace_s": HOUR,
        }
    )
    store = LocalArtifactStore(settings.artifact_dir)
    writer = store.writer()
    await writer.write(f"left by a crash-{uuid.uuid4()}".encode())
    orphan = await writer.commit()
    _age(store.path_of(orphan.sha256), 2 * HOUR)

    async with hosted(SPEC, settings):
        for _ in range(100):
            if not store.path_of(orphan.sha256).exists():
                break
            await asyncio.sleep(0.1)
    assert not store.path_of(orphan.sha256).exists()


class _CollectedBeforeRecording(LocalArtifactStore):
    """A collector removes every blob right after it is stored (the worst timing)."""

    def writer(self) -> BlobWriter:
        store, inner = self, super().writer()

        class Writer:
            async def write(self, data: bytes) -> None:
                await inner.write(data)

            async def commit(self) -> BlobRef:
                blob = await inner.commit()
                store.path_of(blob.sha256).unlink()
                return blob

            async def abort(self) -> None:
                await inner.abort()

        return Writer()


async def test_a_registration_whose_blob_was_collected_is_refused_not_recorded(
    registry: ModelRegistryStub, test_settings: LatheSettings, db_pool: asyncpg.Pool
) -> None:
    name = await new_model(registry)
    queries = RegistryQueries(db_pool)
    store = EventStore(db_pool, ServiceName.MODEL_REGISTRY.value)
    commands = RegistryCommands(
        db_pool,
        store,
        queries,
        _CollectedBeforeRecording(test_settings.home / "collected"),
        RequestLog(store),
    )
    new = NewVersion(
        name,
        "",
        client.SIGNATURE,
        {"auc": 0.8},
        {},
        message_pb2.Lineage(),
        (DeclaredArtifact("model.onnx", message_pb2.ARTIFACT_FORMAT_ONNX, ""),),
    )

    async def chunks() -> AsyncIterator[tuple[str, bytes]]:
        yield "model.onnx", b"onnx bytes"

    with pytest.raises(Conflict, match="register the version again"):
        await commands.register_version(new, chunks(), EventMetadata(actor="trainer"))
    assert (await queries.versions_page(name, before_version=1 << 62, limit=10))[0] == []


async def test_blobs_a_stopped_collector_had_moved_aside_are_put_back(
    test_settings: LatheSettings,
) -> None:
    store = LocalArtifactStore(test_settings.artifact_dir)
    writer = store.writer()
    await writer.write(b"moved aside, then the collector stopped")
    blob = await writer.commit()
    aside = test_settings.artifact_dir / "collecting" / f"{blob.sha256}.interrupted"
    aside.parent.mkdir(parents=True, exist_ok=True)
    store.path_of(blob.sha256).rename(aside)

    assert await store.recover_interrupted_deletions() == 1
    assert await store.verify(blob.sha256) == blob
    assert not aside.exists()


async def test_a_store_another_registry_database_claimed_is_not_collected(
    registry: ModelRegistryStub, test_settings: LatheSettings, db_pool: asyncpg.Pool
) -> None:
    store = LocalArtifactStore(test_settings.artifact_dir)
    other_registry = "00000000-0000-4000-8000-000000000000"
    assert await store.claim(other_registry) == other_registry
    writer = store.writer()
    await writer.write(b"referenced only by the other registry's versions")
    blob = await writer.commit()
    _age(store.path_of(blob.sha256), 2 * HOUR)

    with pytest.raises(FailedPrecondition, match="its own LATHE_ARTIFACT_ROOT"):
        await collect_orphan_blobs(store, RegistryQueries(db_pool), grace_s=HOUR)
    assert await store.verify(blob.sha256) == blob
