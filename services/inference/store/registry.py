"""The model registry as inference uses it: what aliases point to, and verified files.

Downloads are hashed as they stream in and compared with the digest the version was
registered with (``GetModelVersion``), so a blob corrupted in the registry (which then
answers DATA_LOSS), on the wire or by a replaced file is refused: ``ArtifactRefused``.
Only permanent answers refuse a version (``REFUSED_DOWNLOADS``); anything else the
registry says is ``Unavailable``, which the loader retries with backoff.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.errors import NotFound, Unavailable
from libs.grpckit import open_channel

ACTOR = "inference"
REFUSED_DOWNLOADS = {
    grpc.StatusCode.NOT_FOUND: "download",
    grpc.StatusCode.INVALID_ARGUMENT: "download",
    grpc.StatusCode.FAILED_PRECONDITION: "download",
    grpc.StatusCode.OUT_OF_RANGE: "download",
    grpc.StatusCode.DATA_LOSS: "verify",
}
"""The registry's answers to a download that say the version itself cannot be had, and the
stage each refuses it at. Every other code (a deadline, CANCELLED, RESOURCE_EXHAUSTED,
INTERNAL mid-stream ...) may pass: it is an outage, retried, so that one replica's bad
moment is not recorded as the version's refusal while the others serve it."""


class ArtifactRefused(Exception):
    """A file failed its integrity check (``stage`` verify) or the registry says it cannot
    be had (download): the version is refused, not retried."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage


@dataclass(frozen=True)
class AliasTarget:
    """An alias as ``ResolveAlias`` answered."""

    model_name: str
    alias: str
    version: int
    traffic_share: float
    update_time: datetime


class RegistryGateway:
    """One channel to the registry for the life of the process."""

    def __init__(self, address: str, token: str = "") -> None:
        self._channel = open_channel(address)
        self.stub = ModelRegistryStub(self._channel)
        metadata = [("lathe-actor", ACTOR)]
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self.metadata = tuple(metadata)

    async def close(self) -> None:
        await self._channel.close()

    async def model_names(self) -> AsyncIterator[str]:
        token = ""
        while True:
            page = await self._call(
                self.stub.ListModels(
                    rr.ListModelsRequest(page_size=500, page_token=token), timeout=30
                )
            )
            for model in page.models:
                yield model.name
            token = page.next_page_token
            if not token:
                return

    async def resolve(self, model_name: str, alias: str) -> AliasTarget | None:
        """The alias now; None when it is not set (or the model is gone)."""
        try:
            answer = await self.stub.ResolveAlias(
                rr.ResolveAliasRequest(model_name=model_name, alias=alias), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _unavailable(error) from None
        a = answer.alias
        return AliasTarget(
            model_name, alias, a.version, a.traffic_share, a.update_time.ToDatetime(tzinfo=UTC)
        )

    async def version(self, model_name: str, version: int) -> reg.ModelVersion:
        try:
            answer = await self.stub.GetModelVersion(
                rr.GetModelVersionRequest(model_name=model_name, version=version), timeout=30
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(error.details() or "no such version") from None
            raise _unavailable(error) from None
        return answer.model_version

    async def download(self, model_name: str, version: int, artifact: reg.Artifact) -> bytes:
        """The artifact's bytes, verified against its registered sha256."""
        digest, parts = hashlib.sha256(), []
        try:
            async for part in self.stub.DownloadArtifact(
                rr.DownloadArtifactRequest(
                    model_name=model_name, version=version, artifact_name=artifact.name
                ),
                timeout=300,
            ):
                if part.HasField("data"):
                    digest.update(part.data)
                    parts.append(part.data)
        except grpc.aio.AioRpcError as error:
            stage = REFUSED_DOWNLOADS.get(error.code())
            if stage is None:
                raise _unavailable(error) from None
            raise ArtifactRefused(stage, f"{artifact.name}: {error.details()}") from None
        received = digest.hexdigest()
        if received != artifact.sha256:
            raise ArtifactRefused(
                "verify",
                f"{artifact.name} of {model_name} v{version} has sha256 {received} but was "
                f"registered as {artifact.sha256}: refused",
            )
        return b"".join(parts)

    async def _call(self, call):  # type: ignore[no-untyped-def]
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise _unavailable(error) from None


def _unavailable(error: grpc.aio.AioRpcError) -> Unavailable:
    return Unavailable(f"the model registry answered {error.code().name}: {error.details()}")
