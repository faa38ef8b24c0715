"""The trainer's content-addressed blob store: datasets, checkpoints, exported artifacts.

A blob lives at ``<root>/blobs/<sha256[:2]>/<sha256>``. Writes go to a temporary file in
the same file system, are flushed to disk and renamed into place, so a blob is either
whole or absent, whoever crashes when; the same bytes written twice are one blob. Reads
verify the digest. Used by the service and by the workers (no database here).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

_CHUNK = 1024 * 1024


class BlobCorrupted(Exception):
    """A blob's bytes no longer match its name."""


class BlobStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self._blobs / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256."""
        temporary = self._temporary()
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return self._move_in(temporary, hashlib.sha256(data).hexdigest())

    def put_file(self, source: Path) -> str:
        """Store a copy of ``source``; returns its sha256."""
        temporary, digest = self._temporary(), hashlib.sha256()
        with source.open("rb") as reader, temporary.open("wb") as writer:
            while block := reader.read(_CHUNK):
                digest.update(block)
                writer.write(block)
            writer.flush()
            os.fsync(writer.fileno())
        return self._move_in(temporary, digest.hexdigest())

    def get_bytes(self, sha256: str) -> bytes:
        """The blob's bytes, verified; FileNotFoundError or BlobCorrupted otherwise."""
        data = self.path(sha256).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BlobCorrupted(f"blob {sha256} now hashes to {actual}; it was changed on disk")
        return data

    def _temporary(self) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp / f"{uuid.uuid4().hex}.partial"

    def _move_in(self, temporary: Path, sha256: str) -> str:
        final = self.path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary.replace(final)  # same bytes already there: replaced by identical ones
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return sha256
