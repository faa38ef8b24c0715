"""Requests that do not decode, or fail the generic checks, on a real server.

Bytes that are not the method's message, NUL characters in text and timestamps outside
protobuf's range get INVALID_ARGUMENT naming the message or field, before the handler
runs, on unary and streaming methods of any service; the server stays SERVING.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.feature_store.v1 import message_pb2 as fs_messages
from lathe.feature_store.v1 import request_response_pb2 as fs
from lathe.feature_store.v1 import service_pb2 as fs_service
from lathe.feature_store.v1 import service_pb2_grpc as fs_grpc
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1 import service_pb2, service_pb2_grpc
from libs.grpckit import GrpcServer

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
FEATURE_STORE = fs_service.DESCRIPTOR.services_by_name["FeatureStore"]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Handled:
    """Records which handlers ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []


class RecordingRegistry(service_pb2_grpc.ModelRegistryServicer):
    def __init__(self, handled: Handled) -> None:
        self._handled = handled

    async def GetModel(self, request: rr.GetModelRequest, context: object) -> rr.GetModelResponse:
        self._handled.calls.append("GetModel")
        return rr.GetModelResponse(model={"name": request.name})

    async def CreateModel(
        self, request: rr.CreateModelRequest, context: object
    ) -> rr.CreateModelResponse:
        self._handled.calls.append("CreateModel")
        return rr.CreateModelResponse()

    async def ResolveAlias(
        self, request: rr.ResolveAliasRequest, context: object
    ) -> rr.ResolveAliasResponse:
        self._handled.calls.append("ResolveAlias")
        request.as_of.ToDatetime()  # what a real handler does; fails out of range
        return rr.ResolveAliasResponse()

    async def RegisterModelVersion(
        self, request_iterator: AsyncIterator[rr.RegisterModelVersionRequest], context: object
    ) -> rr.RegisterModelVersionResponse:
        async for _message in request_iterator:
            self._handled.calls.append("RegisterModelVersion message")
        return rr.RegisterModelVersionResponse()


class RecordingFeatureStore(fs_grpc.FeatureStoreServicer):
    def __init__(self, handled: Handled) -> None:
        self._handled = handled

    async def GetOnlineFeatures(
        self, request: fs.GetOnlineFeaturesRequest, context: object
    ) -> fs.GetOnlineFeaturesResponse:
        self._handled.calls.append("GetOnlineFeatures")
        return fs.GetOnlineFeaturesResponse()

    async def Materialize(
        self, request: fs.MaterializeRequest, context: object
    ) -> AsyncIterator[fs.MaterializeResponse]:
        self._handled.calls.append("Materialize")
        yield fs.MaterializeResponse()


@pytest.fixture
def handled() -> Handled:
    return Handled()


@pytest_asyncio.fixture
async def channel(handled: Handled) -> AsyncIterator[grpc.aio.Channel]:
    server = GrpcServer(address="127.0.0.1:0", services=[REGISTRY, FEATURE_STORE])
    await server.start()
    server.bind(
        lambda s: service_pb2_grpc.add_ModelRegistryServicer_to_server(
            RecordingRegistry(handled), s
        ),
        lambda s: fs_grpc.add_FeatureStoreServicer_to_server(RecordingFeatureStore(handled), s),
    )
    await server.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as opened:
            yield opened
    finally:
        await server.stop(0)


async def _serving(channel: grpc.aio.Channel) -> bool:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def _status(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


GARBAGE = [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28", b"\x08" + b"\xff" * 11]


@pytest.mark.parametrize("data", GARBAGE)
async def test_bytes_that_are_not_the_message_are_invalid_argument(
    channel: grpc.aio.Channel, handled: Handled, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    get_model = channel.unary_unary(f"/{REGISTRY.full_name}/GetModel")
    materialize = channel.unary_stream(f"/{FEATURE_STORE.full_name}/Materialize")

    code, details = await _status(get_model(data))
    assert (code, details.split(":")[0]) == (
        INVALID,
        "the request is not a valid lathe.model_registry.v1.GetModelRequest",
    )
    assert "Unexpected" not in details and "<class" not in details

    code, details = await _status(materialize(data).read())
    assert code == INVALID
    assert "not a valid lathe.feature_store.v1.MaterializeRequest" in details

    assert handled.calls == []
    assert await _serving(channel)
    reply = await service_pb2_grpc.ModelRegistryStub(channel).GetModel(
        rr.GetModelRequest(name="still-fine")
    )
    assert reply.model.name == "still-fine"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_garbage_in_a_request_stream_is_invalid_argument(
    channel: grpc.aio.Channel, handled: Handled
) -> None:
    register = channel.stream_unary(f"/{REGISTRY.full_name}/RegisterModelVersion")
    good = rr.RegisterModelVersionRequest(chunk=rr.ArtifactChunk(name="a", data=b"x"))

    code, details = await _status(register(iter([good.SerializeToString(), b"\xff\xff\xff"])))

    assert code == INVALID
    assert "not a valid lathe.model_registry.v1.RegisterModelVersionRequest" in details
    assert handled.calls == ["RegisterModelVersion message"]  # the good one only
    assert await _serving(channel)


def _registration_with_nul() -> Iterator[rr.RegisterModelVersionRequest]:
    yield rr.RegisterModelVersionRequest(
        metadata=rr.ModelVersionMetadata(
            model_name="m", artifacts=[rr.ArtifactDeclaration(name="model\x00.onnx")]
        )
    )


async def test_nul_characters_are_rejected_naming_the_field(
    channel: grpc.aio.Channel, handled: Handled
) -> None:
    registry = service_pb2_grpc.ModelRegistryStub(channel)
    features = fs_grpc.FeatureStoreStub(channel)
    online = fs.GetOnlineFeaturesRequest(feature_service="credit")
    online.entities["loan_id"].values.extend(
        [fs_messages.Value(string_value="L-1"), fs_messages.Value(string_value="L-\x002")]
    )

    cases = [
        (registry.GetModel(rr.GetModelRequest(name="m\x00")), "name"),
        (registry.CreateModel(rr.CreateModelRequest(name="m", tags={"k": "\x00"})), "tags['k']"),
        (features.GetOnlineFeatures(online), "entities['loan_id'].values[1].string_value"),
        (
            registry.RegisterModelVersion(_registration_with_nul()),
            "metadata.artifacts[0].name",
        ),
    ]
    for call, path in cases:
        code, details = await _status(call)
        assert code == INVALID, (path, code, details)
        assert f"{path} contains a NUL character" in details

    assert handled.calls == []
    assert await _serving(channel)


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 10**9)]
)
async def test_timestamps_outside_protobufs_range_are_rejected(
    channel: grpc.aio.Channel, handled: Handled, seconds: int, nanos: int
) -> None:
    as_of = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    online = fs.GetOnlineFeaturesRequest(feature_service="credit")
    online.request_data["at"].values.add(timestamp_value=as_of)

    for call, path in [
        (
            service_pb2_grpc.ModelRegistryStub(channel).ResolveAlias(
                rr.ResolveAliasRequest(model_name="m", alias="prod", as_of=as_of)
            ),
            "as_of",
        ),
        (
            fs_grpc.FeatureStoreStub(channel).GetOnlineFeatures(online),
            "request_data['at'].values[0].timestamp_value",
        ),
    ]:
        code, details = await _status(call)
        assert code == INVALID, (path, code, details)
        assert f"{path} is outside the range of a google.protobuf.Timestamp" in details

    assert handled.calls == []


async def test_a_refusal_reaches_a_client_still_streaming_as_sent(
    channel: grpc.aio.Channel, handled: Handled
) -> None:
    """A stream refused at its first message while the client still writes the rest:
    grpcio's asyncio client would report INTERNAL 'Internal error from Core' whenever a
    write failed after the status arrived (grpc/grpc#36066); the server reads what is
    still coming (bounded) before it answers, so the client sees the real status."""
    register = channel.stream_unary(f"/{REGISTRY.full_name}/RegisterModelVersion")
    chunk = rr.RegisterModelVersionRequest(chunk=rr.ArtifactChunk(name="a", data=b"x" * 65536))
    stream = [b"\xff\xff\xff", *[chunk.SerializeToString()] * 63]

    outcomes = [await _status(register(iter(stream))) for _ in range(20)]

    assert {code for code, _ in outcomes} == {INVALID}, outcomes
    assert handled.calls == []
    assert await _serving(channel)
