"""Small helpers to call the model registry the way clients do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec

CHUNK = 1024 * 1024
SIGNATURE = message_pb2.Signature(
    inputs=[
        message_pb2.TensorSpec(name="loan_amount", dtype=message_pb2.DATA_TYPE_FLOAT32),
        message_pb2.TensorSpec(name="annual_income", dtype=message_pb2.DATA_TYPE_FLOAT32),
    ],
    outputs=[message_pb2.TensorSpec(name="p_default", dtype=message_pb2.DATA_TYPE_FLOAT32)],
)


def metadata(
    model_name: str,
    artifacts: Iterable[str] = ("model.onnx",),
    *,
    metrics: Mapping[str, float] | None = None,
    signature: message_pb2.Signature | None = SIGNATURE,
    **lineage: str,
) -> rr.ModelVersionMetadata:
    return rr.ModelVersionMetadata(
        model_name=model_name,
        signature=signature,
        metrics=dict(metrics or {"auc": 0.8}),
        lineage=message_pb2.Lineage(**lineage),
        artifacts=[
            rr.ArtifactDeclaration(name=name, format=message_pb2.ARTIFACT_FORMAT_ONNX)
            for name in artifacts
        ],
    )


async def upload_stream(
    meta: rr.ModelVersionMetadata, contents: Mapping[str, Iterable[bytes]]
) -> AsyncIterator[rr.RegisterModelVersionRequest]:
    yield rr.RegisterModelVersionRequest(metadata=meta)
    for name, chunks in contents.items():
        for data in chunks:
            yield rr.RegisterModelVersionRequest(chunk=rr.ArtifactChunk(name=name, data=data))


async def register(
    stub: ModelRegistryStub,
    model_name: str,
    *,
    content: bytes = b"onnx-bytes",
    metrics: Mapping[str, float] | None = None,
    actor: str = "trainer",
) -> message_pb2.ModelVersion:
    return await RegistryClient(stub, actor=actor).register_version(
        VersionSpec(model_name, SIGNATURE, metrics=dict(metrics or {"auc": 0.8})),
        {"model.onnx": ArtifactUpload(message_pb2.ARTIFACT_FORMAT_ONNX, content=content)},
    )


async def download(
    stub: ModelRegistryStub, model_name: str, version: int, name: str
) -> tuple[message_pb2.Artifact, str, int]:
    """The artifact header, and the sha256 and size of the bytes received."""
    received = await RegistryClient(stub).download(model_name, version, name)
    return received.artifact, received.sha256, received.size_bytes
