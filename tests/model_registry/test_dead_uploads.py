"""The partial upload of a registry killed mid-upload is deleted once it is restarted, while
another registry's live upload into the same artifact root is left alone and completes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from libs.errors import Conflict
from libs.platform.health import health_status
from services.model_registry.app.uploads import DeclaredArtifact, receive_artifacts
from services.model_registry.service import SPEC
from services.model_registry.store.artifacts import LocalArtifactStore
from tests.conftest import free_port
from tests.model_registry.helpers import unique
from tests.support import registry_client as client
from tests.support.hosting import hosted
from tests.support.subprocesses import REPO_ROOT, sigkill, sigterm

pytestmark = pytest.mark.slow

LEASE_S = 3.0
"""Renewed every second: an event loop stalled for 2 s under load still holds its lease."""
CHUNK = b"x" * 65536


async def _start_registry(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.model_registry",
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=out,
        )
    for _ in range(300):
        if await health_status(env["LATHE_MODEL_REGISTRY_ADDR"]) == "SERVING":
            return process
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the registry did not start; see {log}")


class _HeldUpload:
    """A registration that sends its metadata and one chunk, then waits to be let go."""

    def __init__(self, stub: ModelRegistryStub, model: str) -> None:
        self.go = asyncio.Event()

        async def requests() -> AsyncIterator[rr.RegisterModelVersionRequest]:
            yield rr.RegisterModelVersionRequest(metadata=client.metadata(model))
            yield rr.RegisterModelVersionRequest(
                chunk=rr.ArtifactChunk(name="model.onnx", data=CHUNK)
            )
            await self.go.wait()

        self.call = asyncio.ensure_future(stub.RegisterModelVersion(requests()))


async def _new_partial(root: Path, known: set[Path]) -> Path:
    for _ in range(200):
        found = set((root / "incoming").glob("**/*.part")) - known
        if found:
            (partial,) = found
            return partial
        await asyncio.sleep(0.05)
    raise TimeoutError("no partial upload appeared")


async def test_a_killed_registrys_partial_upload_goes_and_a_live_one_stays(
    test_settings: LatheSettings, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")]),
        LATHE_DATABASE_URL=str(test_settings.database_url),
        LATHE_NATS_URL=str(test_settings.nats_url),
        LATHE_NAMESPACE=test_settings.namespace,
        LATHE_HOME=str(tmp_path / "killed-home"),
        LATHE_ARTIFACT_ROOT=str(root),
        LATHE_MODEL_REGISTRY_UPLOAD_LEASE_S=str(LEASE_S),
        LATHE_MODEL_REGISTRY_ADDR=f"127.0.0.1:{free_port()}",
    )
    live_settings = test_settings.model_copy(
        update={"artifact_root": root, "model_registry_upload_lease_s": LEASE_S}
    )
    killed = await _start_registry(env, tmp_path / "killed.log")
    restarted = None
    try:
        async with (
            hosted(SPEC, live_settings),
            grpc.aio.insecure_channel(live_settings.model_registry_addr) as live_channel,
            grpc.aio.insecure_channel(env["LATHE_MODEL_REGISTRY_ADDR"]) as doomed_channel,
        ):
            live, doomed = ModelRegistryStub(live_channel), ModelRegistryStub(doomed_channel)
            model = unique()
            await live.CreateModel(rr.CreateModelRequest(name=model, owner="uw-ml"))
            live_upload = _HeldUpload(live, model)
            live_partial = await _new_partial(root, set())
            doomed_upload = _HeldUpload(doomed, model)
            doomed_partial = await _new_partial(root, {live_partial})

            await sigkill(killed)
            with pytest.raises(grpc.aio.AioRpcError):
                await doomed_upload.call
            restarted = await _start_registry(env, tmp_path / "restarted.log")
            for _ in range(int(10 * LEASE_S / 0.1)):
                if not doomed_partial.exists():
                    break
                await asyncio.sleep(0.1)

            assert not doomed_partial.exists(), "the dead registry's partial upload was kept"
            assert live_partial.exists(), "a live upload's partial file was deleted"
            live_upload.go.set()
            registered = (await live_upload.call).model_version
            assert registered.artifacts[0].size_bytes == len(CHUNK)
            assert not list((root / "incoming").glob("**/*.part"))
    finally:
        await sigkill(killed)
        if restarted is not None:
            await sigterm(restarted)


async def test_an_upload_whose_partial_file_was_swept_is_aborted_not_internal(
    tmp_path: Path,
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    declared = DeclaredArtifact("model.onnx", message_pb2.ARTIFACT_FORMAT_ONNX, "")

    async def chunks() -> AsyncIterator[tuple[str, bytes]]:
        yield "model.onnx", CHUNK
        # Judged dead meanwhile (its lease lapsed while it was cut off from Postgres).
        assert await store.delete_partial_uploads_of(store.owner) == 1
        yield "model.onnx", CHUNK

    with pytest.raises(Conflict, match="upload lease had lapsed"):
        await receive_artifacts(store, [declared], chunks())
