"""Content-addressed artifact blobs: streamed in and out with bounded memory.

Blobs are named by the SHA-256 of their content. ``ArtifactStore`` is the
interface the registry uses; ``LocalArtifactStore`` keeps blobs under a
directory (the default), and an S3-compatible store implements the same
methods. Every read is verified against the digest before anything is served.
Uploads in progress are kept per owner (one registry process), so the partial
uploads of a process that died can be told from those of a live one
(app/upload_lease.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size_bytes: int


class BlobCorrupted(Exception):
    """The stored bytes no longer hash to the blob's name."""

    def __init__(self, expected: BlobRef, actual_sha256: str, actual_size: int) -> None:
        self.expected = expected
        self.actual_sha256 = actual_sha256
        self.actual_size = actual_size
        super().__init__(
            f"blob {expected.sha256} reads back as {actual_sha256} ({actual_size} bytes)"
        )


class BlobMissing(Exception):
    """No blob with that digest is stored."""


class UploadLost(Exception):
    """An upload's partial file was deleted before it was committed (its owner was judged
    dead: its upload lease had lapsed)."""


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size_bytes: int
    modified_at: float
    """When its content was last written (seconds since the epoch)."""


class BlobWriter(Protocol):
    async def write(self, data: bytes) -> None: ...
    async def commit(self) -> BlobRef: ...
    async def abort(self) -> None: ...


class ArtifactStore(Protocol):
    def writer(self) -> BlobWriter:
        """A writer for one new blob; its digest is known at commit."""

    async def verify(self, sha256: str) -> BlobRef:
        """Hash the stored blob; raise BlobCorrupted or BlobMissing."""

    def read(self, blob: BlobRef, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """Stream the blob, re-hashing as it goes; raise BlobCorrupted at the end on mismatch."""

    async def blobs(self) -> list[StoredBlob]:
        """Every stored blob."""

    async def claim(self, registry_id: str) -> str:
        """Record ``registry_id`` as the store's owner unless another registry did first;
        returns the owner."""

    async def keep(self, sha256: str) -> bool:
        """Mark the blob as just written, so collection spares it; False if it is gone."""

    async def delete_unless_written_since(self, sha256: str, cutoff: float) -> int | None:
        """Delete the blob unless its content was written after ``cutoff``; bytes freed,
        or None when it was kept or is gone. Atomic against a writer committing the same
        content at the same moment: that writer's blob survives."""

    async def recover_interrupted_deletions(self) -> int:
        """Put back blobs a collector that stopped mid-way had moved aside; how many."""

    async def delete_partial_uploads(self, cutoff: float) -> int:
        """Delete uploads that were never committed and not written to since ``cutoff``."""

    async def partial_upload_owners(self) -> list[str]:
        """The owners (registry processes) that have, or had, uploads in progress here."""

    async def delete_partial_uploads_of(self, owner: str) -> int:
        """Delete every partial upload of ``owner``, a process known to be dead; how many."""


_OWNER_RE = re.compile(r"^[0-9a-f]{32}$")


class _LocalBlobWriter:
    """Writes to a temporary file, hashing as it goes; commit renames it into place."""

    def __init__(self, root: Path, owner: str) -> None:
        self._root = root
        self._temporary = root / "incoming" / owner / f"{uuid.uuid4().hex}.part"
        self._temporary.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = self._temporary.open("wb")
        self._hash = hashlib.sha256()
        self._size = 0

    async def write(self, data: bytes) -> None:
        assert self._file is not None, "writer already finished"
        await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._hash.update(data)
        self._file.write(data)
        self._size += len(data)

    async def commit(self) -> BlobRef:
        assert self._file is not None, "writer already finished"
        ref = BlobRef(self._hash.hexdigest(), self._size)
        file, self._file = self._file, None
        await asyncio.to_thread(self._finish, file, ref)
        return ref

    def _finish(self, file: BinaryIO, ref: BlobRef) -> None:
        file.flush()
        os.fsync(file.fileno())
        file.close()
        final = _blob_path(self._root, ref.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Same content, same name: replacing an existing blob is harmless.
        try:
            self._temporary.replace(final)
        except FileNotFoundError:
            raise UploadLost(f"the partial upload {self._temporary} was deleted") from None

    async def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._temporary.unlink(missing_ok=True)


class LocalArtifactStore:
    """Blobs under ``root/sha256/<first two hex digits>/<digest>``; uploads in progress
    under ``root/incoming/<owner>/``."""

    def __init__(self, root: Path, owner: str | None = None) -> None:
        self._root = root
        self.owner = owner or uuid.uuid4().hex
        """Whose uploads this store's writers are: 32 hex digits naming one process."""
        if not _OWNER_RE.fullmatch(self.owner):
            raise ValueError(f"an upload owner is 32 lowercase hex digits, got {self.owner!r}")
        root.mkdir(parents=True, exist_ok=True)

    def path_of(self, sha256: str) -> Path:
        return _blob_path(self._root, sha256)

    def writer(self) -> BlobWriter:
        return _LocalBlobWriter(self._root, self.owner)

    async def verify(self, sha256: str) -> BlobRef:
        path = self.path_of(sha256)
        try:
            actual, size = await asyncio.to_thread(_hash_file, path)
        except FileNotFoundError:
            raise BlobMissing(f"blob {sha256} is not in the store at {path}") from None
        if actual != sha256:
            raise BlobCorrupted(BlobRef(sha256, size), actual, size)
        return BlobRef(sha256, size)

    async def blobs(self) -> list[StoredBlob]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> list[StoredBlob]:
        found = []
        for path in (self._root / "sha256").glob("*/*"):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                stat = path.stat()
                found.append(StoredBlob(path.name, stat.st_size, stat.st_mtime))
        return found

    async def claim(self, registry_id: str) -> str:
        return await asyncio.to_thread(self._claim, registry_id)

    def _claim(self, registry_id: str) -> str:
        owner = self._root / "REGISTRY_ID"
        # Exclusive create: the first registry to collect here owns the store.
        with contextlib.suppress(FileExistsError), owner.open("x") as claimed:
            claimed.write(registry_id)
        return owner.read_text().strip()

    async def keep(self, sha256: str) -> bool:
        try:
            await asyncio.to_thread(os.utime, self.path_of(sha256))
        except FileNotFoundError:
            return False
        return True

    async def recover_interrupted_deletions(self) -> int:
        return await asyncio.to_thread(self._recover_interrupted_deletions)

    def _recover_interrupted_deletions(self) -> int:
        restored = 0
        for held in (self._root / "collecting").glob("*.*"):
            with contextlib.suppress(FileNotFoundError):
                restored += _put_back(held, self.path_of(held.name.split(".")[0]))
        return restored

    async def delete_unless_written_since(self, sha256: str, cutoff: float) -> int | None:
        return await asyncio.to_thread(self._delete_unless_written_since, sha256, cutoff)

    def _delete_unless_written_since(self, sha256: str, cutoff: float) -> int | None:
        # Move the blob aside first (atomic), then judge the file actually held: a writer
        # committing this content meanwhile either replaced the path before the move (a
        # fresh mtime: put back) or after it (its new file stays at the path).
        path = self.path_of(sha256)
        held = self._root / "collecting" / f"{sha256}.{uuid.uuid4().hex}"
        held.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.rename(held)
        except FileNotFoundError:
            return None
        stat = held.stat()
        if stat.st_mtime > cutoff:
            _put_back(held, path)
            return None
        held.unlink()
        return stat.st_size

    async def delete_partial_uploads(self, cutoff: float) -> int:
        return await asyncio.to_thread(self._delete_partial_uploads, cutoff)

    def _delete_partial_uploads(self, cutoff: float) -> int:
        deleted = 0
        incoming = self._root / "incoming"
        # Per owner, and flat (as registries before upload leases wrote them).
        for path in [*incoming.glob("*/*.part"), *incoming.glob("*.part")]:
            with contextlib.suppress(FileNotFoundError):  # committed or aborted meanwhile
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    deleted += 1
        return deleted

    async def partial_upload_owners(self) -> list[str]:
        return await asyncio.to_thread(self._partial_upload_owners)

    def _partial_upload_owners(self) -> list[str]:
        incoming = self._root / "incoming"
        if not incoming.is_dir():
            return []
        return [p.name for p in incoming.iterdir() if p.is_dir() and _OWNER_RE.fullmatch(p.name)]

    async def delete_partial_uploads_of(self, owner: str) -> int:
        if not _OWNER_RE.fullmatch(owner):
            raise ValueError(f"an upload owner is 32 lowercase hex digits, got {owner!r}")
        return await asyncio.to_thread(self._delete_partial_uploads_of, owner)

    def _delete_partial_uploads_of(self, owner: str) -> int:
        directory = self._root / "incoming" / owner
        files = sum(1 for _ in directory.glob("*.part"))
        shutil.rmtree(directory, ignore_errors=True)
        return files

    async def read(self, blob: BlobRef, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        with self.path_of(blob.sha256).open("rb") as handle:
            while data := await asyncio.to_thread(handle.read, chunk_bytes):
                digest.update(data)
                size += len(data)
                yield data
        if digest.hexdigest() != blob.sha256:
            raise BlobCorrupted(blob, digest.hexdigest(), size)


def _put_back(held: Path, path: Path) -> bool:
    """Return a blob moved aside to its path; False when a writer stored the same content
    there meanwhile (the aside copy is then dropped)."""
    if path.exists():
        held.unlink()
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    held.rename(path)
    return True


def _blob_path(root: Path, sha256: str) -> Path:
    return root / "sha256" / sha256[:2] / sha256


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while data := handle.read(CHUNK_BYTES):
            digest.update(data)
            size += len(data)
    return digest.hexdigest(), size
