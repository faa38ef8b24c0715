"""The model registry as the trainer uses it: does the model exist, register once per job.

A job registers under one client request id, ``trainer-job-<job id>``, the same from
every attempt and every trainer that owns the job in turn: whichever of them retries a
registration whose reply was lost (the SDK's own retries, a resumed job after a crash
between registering and recording ``registered``, two owners of a job at once) gets the
version the first one registered, never a second one (docs/adr/0015-client-request-ids.md).
The registry honours the id for its request-id window (24 h by default); a job that
resumes later than that still finds its version by lineage (``version_of_job``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TypeVar

import grpc

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.errors import Unavailable
from libs.grpckit import open_channel
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from libs.sdk.retries import AMBIGUOUS, DEFAULT_RETRY, RetryPolicy, with_retries

ACTOR = "trainer"
T = TypeVar("T")


def registration_request_id(job_id: str) -> str:
    """The client request id of ``job_id``'s registration: one per job, never per attempt."""
    return f"trainer-job-{job_id}"


class RegistryGateway:
    def __init__(
        self, address: str, token: str = "", *, retry: RetryPolicy = DEFAULT_RETRY
    ) -> None:
        self._address = address
        self._token = token
        self._retry = retry

    async def model_exists(self, name: str) -> bool:
        async with open_channel(self._address) as channel:
            try:
                await ModelRegistryStub(channel).GetModel(rr.GetModelRequest(name=name), timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise Unavailable(f"the model registry did not answer: {error.details()}") from None
        return True

    async def version_of_job(self, model_name: str, job_id: str) -> int:
        """The version whose lineage names ``job_id`` (0: none) — a retry finds its own."""
        token = ""
        async with open_channel(self._address) as channel:
            stub = ModelRegistryStub(channel)
            while True:
                request = rr.ListModelVersionsRequest(
                    model_name=model_name, page_size=200, page_token=token
                )
                page = await _answered(
                    with_retries(
                        self._retry,
                        lambda request=request: stub.ListModelVersions(request, timeout=30),
                    )
                )
                for version in page.model_versions:
                    if version.lineage.training_job_id == job_id:
                        return version.version
                token = page.next_page_token
                if not token:
                    return 0

    async def register(
        self, spec: VersionSpec, artifacts: Mapping[str, ArtifactUpload], *, job_id: str
    ) -> int:
        """Register the job's version, or get the one registered under its request id.

        Unavailable when the registry did not answer (the version may exist: registering
        again later gets it).
        """
        async with open_channel(self._address) as channel:
            client = RegistryClient(
                ModelRegistryStub(channel), actor=ACTOR, token=self._token, retry=self._retry
            )
            version = await _answered(
                client.register_version(spec, artifacts, request_id=registration_request_id(job_id))
            )
        return int(version.version)


async def _answered(call: Awaitable[T]) -> T:
    """``call``'s result; Unavailable if the registry could not be reached or did not answer
    (after the retries), so the job waits for it instead of failing."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() in AMBIGUOUS:
            raise Unavailable(
                f"the model registry did not answer ({error.code().name}: {error.details()})"
            ) from None
        raise


def artifact(fmt: int, content: bytes) -> ArtifactUpload:
    return ArtifactUpload(fmt, content=content)


FORMATS = {
    "model.onnx": message_pb2.ARTIFACT_FORMAT_ONNX,
    "weights.safetensors": message_pb2.ARTIFACT_FORMAT_SAFETENSORS,
    "preprocessing.json": message_pb2.ARTIFACT_FORMAT_JSON,
    "signature.json": message_pb2.ARTIFACT_FORMAT_JSON,
}
