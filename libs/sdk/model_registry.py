"""The model registry from Python: register versions with their files, download verified.

Wraps the generated stub so callers need not build the streaming requests by
hand: artifacts are read and sent in chunks (never whole in memory), with their
sha256 declared so the registry refuses a corrupted upload, and downloads are
re-hashed on arrival. Every change is sent with a client request id and retried
after an ambiguous failure (UNAVAILABLE, DEADLINE_EXCEEDED) with the same id, so
it applies once however often it is retried (``libs/sdk/retries.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.sdk.retries import DEFAULT_RETRY, RetryPolicy, new_request_id, with_retries

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ArtifactUpload:
    """One file of a version: in memory (``content``) or on disk (``path``)."""

    format: int
    """A ``message_pb2.ArtifactFormat`` value, e.g. ``ARTIFACT_FORMAT_ONNX``."""
    content: bytes | None = None
    path: Path | None = None

    def __post_init__(self) -> None:
        if (self.content is None) == (self.path is None):
            raise ValueError("give an artifact either content or a path")

    def chunks(self) -> AsyncIterator[bytes]:
        return _chunks(self)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.content is not None:
            digest.update(self.content)
        else:
            assert self.path is not None
            with self.path.open("rb") as handle:
                while block := handle.read(CHUNK_BYTES):
                    digest.update(block)
        return digest.hexdigest()


@dataclass(frozen=True)
class VersionSpec:
    """What to register besides the files."""

    model_name: str
    signature: message_pb2.Signature
    metrics: Mapping[str, float] = field(default_factory=dict)
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    lineage: message_pb2.Lineage = field(default_factory=message_pb2.Lineage)


@dataclass(frozen=True)
class Download:
    artifact: message_pb2.Artifact
    """What the registry says the file is (name, format, sha256, size)."""
    sha256: str
    """The digest of the bytes actually received."""
    size_bytes: int
    content: bytes | None
    """The bytes, unless they were written to a file."""


class RegistryClient:
    """Registry changes sent safely, and the calls that stream.

    ``actor`` (and ``token``) go on every change; each change carries a client request
    id (a fresh one per call unless the request has one) and is retried with it after
    an ambiguous failure, as ``retry`` says. Build it from a stub
    (``ModelRegistryStub(open_channel(address))``); the stub stays available for reads.
    """

    def __init__(
        self,
        stub: ModelRegistryStub,
        *,
        actor: str = "",
        token: str = "",
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.stub = stub
        metadata = [("lathe-actor", actor)] if actor else []
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)
        self._retry = retry

    async def create_model(self, request: rr.CreateModelRequest) -> message_pb2.Model:
        """Create a model; returns it as created."""
        return (await self._change(self.stub.CreateModel, request)).model

    async def set_promotion_policy(
        self, request: rr.SetPromotionPolicyRequest
    ) -> message_pb2.Model:
        """Replace a model's promotion policy; returns the model with it."""
        return (await self._change(self.stub.SetPromotionPolicy, request)).model

    async def set_alias(self, request: rr.SetAliasRequest) -> message_pb2.Alias:
        """Move an alias from ``expected_version``; returns it as this call left it."""
        return (await self._change(self.stub.SetAlias, request)).alias

    async def delete_alias(self, request: rr.DeleteAliasRequest) -> None:
        await self._change(self.stub.DeleteAlias, request)

    async def approve(self, request: rr.ApproveModelVersionRequest) -> None:
        """Record the actor's approval of a version for a protected alias."""
        await self._change(self.stub.ApproveModelVersion, request)

    async def register_version(
        self, spec: VersionSpec, artifacts: Mapping[str, ArtifactUpload], *, request_id: str = ""
    ) -> message_pb2.ModelVersion:
        """Stream the version's metadata and files; returns the registered version.

        A retry streams the files again; the registry answers it as soon as it reads
        the metadata if the first attempt was recorded.
        """
        metadata = rr.ModelVersionMetadata(
            model_name=spec.model_name,
            description=spec.description,
            signature=spec.signature,
            metrics=dict(spec.metrics),
            tags=dict(spec.tags),
            lineage=spec.lineage,
            artifacts=[
                rr.ArtifactDeclaration(name=name, format=upload.format, sha256=upload.sha256())  # type: ignore[arg-type]
                for name, upload in artifacts.items()
            ],
            request_id=request_id or new_request_id(),
        )

        async def requests() -> AsyncIterator[rr.RegisterModelVersionRequest]:
            yield rr.RegisterModelVersionRequest(metadata=metadata)
            for name, upload in artifacts.items():
                async for data in upload.chunks():
                    yield rr.RegisterModelVersionRequest(
                        chunk=rr.ArtifactChunk(name=name, data=data)
                    )

        response = await with_retries(
            self._retry,
            lambda: self.stub.RegisterModelVersion(
                requests(), metadata=self._metadata, timeout=self._retry.attempt_timeout_s
            ),
        )
        return response.model_version

    async def _change(self, rpc: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """Send ``request`` with a request id (its own, or a fresh one) until it is answered."""
        if not request.request_id:
            stamped = type(request)()
            stamped.CopyFrom(request)
            stamped.request_id = new_request_id()
            request = stamped
        return await with_retries(
            self._retry,
            lambda: rpc(request, metadata=self._metadata, timeout=self._retry.attempt_timeout_s),
        )

    async def download(
        self, model_name: str, version: int, artifact_name: str, *, to: Path | None = None
    ) -> Download:
        """Fetch one artifact (into memory, or streamed into ``to``) and hash what arrived."""
        digest, size, header = hashlib.sha256(), 0, None
        parts: list[bytes] = []
        handle = to.open("wb") if to is not None else None
        try:
            async for part in self.stub.DownloadArtifact(
                rr.DownloadArtifactRequest(
                    model_name=model_name, version=version, artifact_name=artifact_name
                )
            ):
                if part.HasField("artifact"):
                    header = part.artifact
                    continue
                digest.update(part.data)
                size += len(part.data)
                if handle is not None:
                    handle.write(part.data)
                else:
                    parts.append(part.data)
        finally:
            if handle is not None:
                handle.close()
        if header is None:
            raise RuntimeError("the registry sent no artifact header")
        content = b"".join(parts) if to is None else None
        return Download(header, digest.hexdigest(), size, content)


async def _chunks(upload: ArtifactUpload) -> AsyncIterator[bytes]:
    if upload.content is not None:
        # An empty file still sends one (empty) chunk, so the registry sees it arrive.
        for start in range(0, max(len(upload.content), 1), CHUNK_BYTES):
            yield upload.content[start : start + CHUNK_BYTES]
        return
    assert upload.path is not None
    with upload.path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            yield block
