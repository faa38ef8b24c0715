"""The model registry as the trainer uses it: does the model exist, register once per job."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.errors import Unavailable
from libs.grpckit import open_channel
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec

ACTOR = "trainer"


class RegistryGateway:
    def __init__(self, address: str, token: str = "") -> None:
        self._address = address
        self._token = token

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
                page = await stub.ListModelVersions(
                    rr.ListModelVersionsRequest(
                        model_name=model_name, page_size=200, page_token=token
                    ),
                    timeout=30,
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
        async with open_channel(self._address) as channel:
            client = RegistryClient(ModelRegistryStub(channel), actor=ACTOR, token=self._token)
            # TODO(registry request_id): once RegisterModelVersion takes a client request id,
            # pass request_id=job_id here (the one place), so a retry after an ambiguous error
            # cannot register twice even between version_of_job() and this call.
            version = await client.register_version(spec, artifacts)
        return int(version.version)


def artifact(fmt: int, content: bytes) -> ArtifactUpload:
    return ArtifactUpload(fmt, content=content)


FORMATS = {
    "model.onnx": message_pb2.ARTIFACT_FORMAT_ONNX,
    "weights.safetensors": message_pb2.ARTIFACT_FORMAT_SAFETENSORS,
    "preprocessing.json": message_pb2.ARTIFACT_FORMAT_JSON,
    "signature.json": message_pb2.ARTIFACT_FORMAT_JSON,
}
