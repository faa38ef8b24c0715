"""Versions and their artifacts: streamed in, verified out, corruption refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import asyncpg
import grpc

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from tests.model_registry.helpers import new_model, status_of
from tests.support import registry_client as client


async def test_versions_number_up_and_keep_their_metadata(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    first = await client.register(registry, name, metrics={"auc": 0.71, "ks": 0.4})
    second = await client.register(registry, name, content=b"other", actor="ci")

    assert (first.version, second.version) == (1, 2)
    fetched = await registry.GetModelVersion(rr.GetModelVersionRequest(model_name=name, version=1))
    assert fetched.model_version == first
    assert dict(first.metrics) == {"auc": 0.71, "ks": 0.4}
    assert first.signature == client.SIGNATURE
    assert first.artifacts[0].sha256 == hashlib.sha256(b"onnx-bytes").hexdigest()
    assert first.artifacts[0].size_bytes == len(b"onnx-bytes")
    assert second.created_by == "ci"
    model = (await registry.GetModel(rr.GetModelRequest(name=name))).model
    assert model.latest_version == 2


async def test_several_artifacts_and_declared_digests(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    onnx, weights = os.urandom(3 * client.CHUNK + 17), os.urandom(1000)
    meta = client.metadata(name, ["model.onnx", "weights.safetensors"])
    meta.artifacts[0].sha256 = hashlib.sha256(onnx).hexdigest()
    chunks = [onnx[i : i + client.CHUNK] for i in range(0, len(onnx), client.CHUNK)]

    response = await registry.RegisterModelVersion(
        client.upload_stream(meta, {"model.onnx": chunks, "weights.safetensors": [weights]})
    )

    version = response.model_version.version
    for artifact_name, content in (("model.onnx", onnx), ("weights.safetensors", weights)):
        header, digest, size = await client.download(registry, name, version, artifact_name)
        assert digest == header.sha256 == hashlib.sha256(content).hexdigest()
        assert size == header.size_bytes == len(content)


async def test_a_digest_mismatch_registers_nothing(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    meta = client.metadata(name)
    meta.artifacts[0].sha256 = hashlib.sha256(b"what the client meant").hexdigest()

    code, details = await status_of(
        registry.RegisterModelVersion(client.upload_stream(meta, {"model.onnx": [b"what arrived"]}))
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "altered in transit" in details
    model = (await registry.GetModel(rr.GetModelRequest(name=name))).model
    assert model.latest_version == 0


async def test_a_corrupted_blob_is_refused_and_recorded(
    registry: ModelRegistryStub, test_settings: LatheSettings, db_pool: asyncpg.Pool
) -> None:
    name = await new_model(registry)
    version = await client.register(registry, name, content=os.urandom(5000))
    sha = version.artifacts[0].sha256
    blob = Path(test_settings.artifact_dir) / "sha256" / sha[:2] / sha
    corrupted = bytearray(blob.read_bytes())
    corrupted[100] ^= 0xFF
    blob.write_bytes(bytes(corrupted))

    received: list[rr.DownloadArtifactResponse] = []
    call = registry.DownloadArtifact(
        rr.DownloadArtifactRequest(model_name=name, version=1, artifact_name="model.onnx")
    )

    async def drain() -> None:
        async for part in call:
            received.append(part)

    code, details = await status_of(drain())
    assert code == grpc.StatusCode.DATA_LOSS
    assert "sha256" in details
    assert received == [], "nothing of a corrupted blob may be served"
    recorded = await db_pool.fetchval(
        "SELECT count(*) FROM model_registry.events WHERE stream_id = $1 AND event_type = $2",
        f"artifact-{sha}",
        "lathe.model_registry.v1.ArtifactCorruptionDetected",
    )
    assert recorded == 1


async def test_versions_page_newest_first(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    for i in range(7):
        await client.register(registry, name, content=bytes([i]))

    seen, token = [], ""
    while True:
        page = await registry.ListModelVersions(
            rr.ListModelVersionsRequest(model_name=name, page_size=3, page_token=token)
        )
        seen += [v.version for v in page.model_versions]
        if not (token := page.next_page_token):
            break

    assert seen == [7, 6, 5, 4, 3, 2, 1]


async def test_lineage_names_its_sources_and_current_aliases(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    response = await registry.RegisterModelVersion(
        client.upload_stream(
            client.metadata(
                name,
                training_job_id="job-42",
                dataset_snapshot_id="ds-sha-1",
                feature_service="underwriting",
                feature_service_version="3",
                code_revision="abc123",
            ),
            {"model.onnx": [b"x"]},
        )
    )
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="staging", version=1))

    lineage = await registry.GetLineage(rr.GetLineageRequest(model_name=name, version=1))

    assert lineage.lineage == message_pb2.Lineage(
        training_job_id="job-42",
        dataset_snapshot_id="ds-sha-1",
        feature_service="underwriting",
        feature_service_version="3",
        code_revision="abc123",
    )
    assert list(lineage.artifacts) == list(response.model_version.artifacts)
    assert list(lineage.aliases) == ["staging"]
