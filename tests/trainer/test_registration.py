"""A job registers exactly one version, and records it, whatever happens to the replies.

The trainer registers under the job's client request id (``trainer-job-<job id>``), so a
registration sent again — by another attempt, another owner of the job, or the trainer
retrying after the registry was unreachable — gets the version the first one registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc

from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings, ServiceName
from libs.runtime import ServiceHost
from libs.sdk.model_registry import ArtifactUpload, VersionSpec
from services.trainer.service import SPEC
from services.trainer.store.registry import RegistryGateway, registration_request_id
from tests.support.hosting import hosted
from tests.support.registry_client import SIGNATURE
from tests.support.reply_dropping_link import ReplyDroppingLink
from tests.trainer.helpers import DONE, Dataset, events, spec, submit, wait_for


class RegistrationLosingLink(ReplyDroppingLink):
    """Between the trainer and the registry: loses the reply to the first registration
    that carries ``marker`` (its request id, plain in the metadata message), then refuses
    every connection for ``outage_s`` — longer than the SDK's own retries last, so the
    trainer has to send the registration again itself, later."""

    def __init__(self, host: str, port: int, *, marker: bytes, outage_s: float) -> None:
        super().__init__(host, port)
        self._marker = marker
        self._outage_s = outage_s
        self.registrations_seen = 0
        self._outage: asyncio.Task[None] | None = None

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(
            self._requests(reader, upstream_writer),
            self._replies(upstream_reader, writer, upstream_writer),
            return_exceptions=True,
        )

    async def _requests(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        tail = b""
        try:
            while data := await reader.read(65536):
                window = tail + data
                if self._marker in window:
                    self.registrations_seen += 1
                    if self._outage is None:
                        self.drop_next_replies(1)
                        self._outage = asyncio.create_task(self._refuse_for_a_while())
                tail = window[-len(self._marker) :]
                upstream.write(data)
                await upstream.drain()
        finally:
            with contextlib.suppress(Exception):
                upstream.transport.abort()

    async def stop(self) -> None:
        if self._outage is not None:
            self._outage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outage
        await super().stop()

    async def _refuse_for_a_while(self) -> None:
        assert self._server is not None
        self._server.close()  # no new connections; the registration's own goes on
        await asyncio.sleep(self._outage_s)
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)


@asynccontextmanager
async def registration_losing_link(
    address: str, *, marker: bytes, outage_s: float
) -> AsyncIterator[RegistrationLosingLink]:
    host, port = address.rsplit(":", 1)
    link = RegistrationLosingLink(host, int(port), marker=marker, outage_s=outage_s)
    await link.start()
    try:
        yield link
    finally:
        await link.stop()


async def _versions(registry: ModelRegistryStub, model_name: str) -> list[reg.ModelVersion]:
    page = await registry.ListModelVersions(reg_rr.ListModelVersionsRequest(model_name=model_name))
    return list(page.model_versions)


async def test_a_lost_registration_reply_and_a_registry_outage_register_one_version(
    feature_store_host: ServiceHost,
    registry_host: ServiceHost,
    registry: ModelRegistryStub,
    dataset: Dataset,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
) -> None:
    async with registration_losing_link(
        test_settings.service_addr(ServiceName.MODEL_REGISTRY),
        marker=registration_request_id("").encode(),
        outage_s=4.0,
    ) as link:
        settings = test_settings.model_copy(update={"model_registry_addr": link.address})
        async with (
            hosted(SPEC, settings),
            grpc.aio.insecure_channel(settings.service_addr(ServiceName.TRAINER)) as channel,
        ):
            trainer = TrainerStub(channel)
            job_id = await submit(trainer, spec(dataset))
            job = await wait_for(trainer, job_id, DONE, 180)
            history = await events(trainer, job_id)

    assert job.state == message_pb2.JOB_STATE_SUCCEEDED, job.failure_reason
    assert link.replies_dropped == 1, "the first registration's reply was lost"
    assert link.registrations_seen >= 2, "and the registration was sent again"
    versions = await _versions(registry, dataset.model_name)
    assert [v.version for v in versions] == [job.model_version] == [1], "exactly one version"
    registered = [e.registered for e in history if e.HasField("registered")]
    assert len(registered) == 1 and registered[0].version == 1
    causes = await db_pool.fetch(
        "SELECT causation_id FROM model_registry.events WHERE stream_id = $1 "
        "AND event_type LIKE '%ModelVersionRegistered'",
        f"model-{dataset.model_name}",
    )
    assert [c["causation_id"] for c in causes] == [registration_request_id(job_id)]


async def test_two_owners_of_a_job_register_one_version(
    registry_host: ServiceHost, registry: ModelRegistryStub, test_settings: LatheSettings
) -> None:
    """Two trainers both past the lineage lookup (or one retrying after a lost reply whose
    own retries ran out): the registrations share the job's request id, so they get one
    version between them."""
    model_name = f"two-owners-{uuid.uuid4().hex[:8]}"
    await registry.CreateModel(reg_rr.CreateModelRequest(name=model_name, owner="risk-ml"))
    gateway = RegistryGateway(test_settings.service_addr(ServiceName.MODEL_REGISTRY))
    job_id = str(uuid.uuid4())
    version_spec = VersionSpec(
        model_name, SIGNATURE, metrics={"auc": 0.8}, lineage=reg.Lineage(training_job_id=job_id)
    )
    artifacts = {"model.onnx": ArtifactUpload(reg.ARTIFACT_FORMAT_ONNX, content=b"onnx")}

    first = await gateway.register(version_spec, artifacts, job_id=job_id)
    concurrent = await asyncio.gather(
        *(gateway.register(version_spec, artifacts, job_id=job_id) for _ in range(4))
    )

    assert concurrent == [first] * 4
    assert [v.version for v in await _versions(registry, model_name)] == [first] == [1]
