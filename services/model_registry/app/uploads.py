"""Receiving a version's artifacts from a chunk stream into the blob store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from lathe.model_registry.v1 import message_pb2
from libs.errors import Conflict, InvalidArgument
from services.model_registry.store.artifacts import ArtifactStore, BlobWriter, UploadLost


@dataclass(frozen=True)
class DeclaredArtifact:
    name: str
    format: int
    """A ``message_pb2.ArtifactFormat`` value."""
    sha256: str
    """Expected digest, or "" when the client declared none."""


async def receive_artifacts(
    store: ArtifactStore,
    declared: Sequence[DeclaredArtifact],
    chunks: AsyncIterator[tuple[str, bytes]],
) -> list[message_pb2.Artifact]:
    """Stream every declared artifact into ``store``; memory stays at one chunk."""
    by_name = {d.name: d for d in declared}
    done: dict[str, message_pb2.Artifact] = {}
    current: DeclaredArtifact | None = None
    writer: BlobWriter | None = None
    try:
        async for name, data in chunks:
            if current is None or name != current.name:
                if current is not None and writer is not None:
                    done[current.name] = await _finish(writer, current)
                    writer = None
                current = _next_artifact(name, by_name, done)
                writer = store.writer()
            assert writer is not None
            await writer.write(data)
        if current is not None and writer is not None:
            done[current.name] = await _finish(writer, current)
            writer = None
    finally:
        if writer is not None:
            await writer.abort()
    missing = [d.name for d in declared if d.name not in done]
    if missing:
        raise InvalidArgument(f"no content was received for declared artifact(s) {missing}")
    return [done[d.name] for d in declared]


def _next_artifact(
    name: str, declared: dict[str, DeclaredArtifact], done: dict[str, message_pb2.Artifact]
) -> DeclaredArtifact:
    if name not in declared:
        raise InvalidArgument(
            f"chunk for artifact {name!r}, which the metadata did not declare; "
            f"declared: {sorted(declared)}"
        )
    if name in done:
        raise InvalidArgument(
            f"more chunks for artifact {name!r} after another artifact started; "
            "send each artifact's chunks together"
        )
    return declared[name]


async def _finish(writer: BlobWriter, declared: DeclaredArtifact) -> message_pb2.Artifact:
    try:
        blob = await writer.commit()
    except UploadLost:
        raise Conflict(
            f"the upload of artifact {declared.name!r} was deleted before it was stored: this "
            "registry process's upload lease had lapsed (cut off from Postgres for longer than "
            "LATHE_MODEL_REGISTRY_UPLOAD_LEASE_S?), so another judged it dead; register the "
            "version again"
        ) from None
    if declared.sha256 and declared.sha256 != blob.sha256:
        raise InvalidArgument(
            f"artifact {declared.name!r} was declared with sha256 {declared.sha256} but the "
            f"received content hashes to {blob.sha256}: the upload was altered in transit; retry"
        )
    return message_pb2.Artifact(
        name=declared.name,
        format=declared.format,  # type: ignore[arg-type]
        sha256=blob.sha256,
        size_bytes=blob.size_bytes,
    )
