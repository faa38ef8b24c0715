"""Which registry answers refuse a version, and which are an outage to retry.

Only answers about the version itself are refusals (recorded as DeploymentFailed); a
deadline, a cancelled stream or a registry under load is the registry's bad moment, and
refusing on it would leave one replica refusing a version the others serve.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.errors import Unavailable
from services.inference.store.registry import ArtifactRefused, RegistryGateway

BLOB = b"model bytes"


class Stub:
    """``DownloadArtifact`` sends one chunk, then ends or fails with ``code``."""

    def __init__(self, code: grpc.StatusCode | None) -> None:
        self.code = code

    def DownloadArtifact(self, request: Any, timeout: float) -> AsyncIterator[Any]:  # noqa: N802
        async def stream() -> AsyncIterator[Any]:
            yield rr.DownloadArtifactResponse(data=BLOB)
            if self.code is not None:
                raise grpc.aio.AioRpcError(
                    self.code, grpc.aio.Metadata(), grpc.aio.Metadata(), "it said no"
                )

        return stream()


async def _download(code: grpc.StatusCode | None, sha256: str = "") -> bytes:
    gateway = RegistryGateway("127.0.0.1:1")
    gateway.stub = Stub(code)  # type: ignore[assignment]
    try:
        artifact = reg.Artifact(
            name="model.onnx", sha256=sha256 or hashlib.sha256(BLOB).hexdigest()
        )
        return await gateway.download("credit", 2, artifact)
    finally:
        await gateway.close()


@pytest.mark.parametrize(
    ("code", "stage"),
    [
        (grpc.StatusCode.NOT_FOUND, "download"),
        (grpc.StatusCode.INVALID_ARGUMENT, "download"),
        (grpc.StatusCode.FAILED_PRECONDITION, "download"),
        (grpc.StatusCode.OUT_OF_RANGE, "download"),
        (grpc.StatusCode.DATA_LOSS, "verify"),
    ],
)
async def test_permanent_answers_refuse_the_version(code: grpc.StatusCode, stage: str) -> None:
    with pytest.raises(ArtifactRefused) as refused:
        await _download(code)
    assert refused.value.stage == stage
    assert "model.onnx: it said no" in str(refused.value)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    ],
)
async def test_every_other_answer_is_an_outage_to_retry(code: grpc.StatusCode) -> None:
    with pytest.raises(Unavailable, match=f"answered {code.name}"):
        await _download(code)


async def test_a_digest_mismatch_is_refused_at_verify() -> None:
    with pytest.raises(ArtifactRefused) as refused:
        await _download(None, sha256="0" * 64)
    assert refused.value.stage == "verify"


async def test_a_verified_download_returns_its_bytes() -> None:
    assert await _download(None) == BLOB
