"""The gRPC kit on a real server: health, reflection, auth, errors, deadlines, draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1 import service_pb2, service_pb2_grpc
from libs.errors import NotFound
from libs.grpckit import GrpcServer, open_channel, remaining_time_s
from libs.grpckit.server import LIVENESS_SERVICE

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
TOKEN = "s3cret"


class ScriptedRegistry(service_pb2_grpc.ModelRegistryServicer):
    """Behaves according to the requested name, to exercise the kit."""

    def __init__(self, downstream: str | None = None) -> None:
        self._downstream = downstream

    async def CreateModel(
        self, request: rr.CreateModelRequest, context: object
    ) -> rr.CreateModelResponse:
        return rr.CreateModelResponse()

    async def GetModel(self, request: rr.GetModelRequest, context: object) -> rr.GetModelResponse:
        if request.name == "boom":
            raise RuntimeError("secret internals")
        if request.name == "missing":
            raise NotFound("no model named 'missing'")
        if request.name.startswith("huge"):
            raise NotFound(f"no model named {request.name!r}")
        if request.name == "slow":
            await asyncio.sleep(0.5)
        if request.name == "remaining":
            remaining = remaining_time_s()
            return rr.GetModelResponse(model={"description": f"{remaining:.3f}"})
        if request.name == "forward" and self._downstream:
            async with open_channel(self._downstream) as channel:
                return await service_pb2_grpc.ModelRegistryStub(channel).GetModel(
                    rr.GetModelRequest(name="remaining")
                )
        return rr.GetModelResponse(model={"name": request.name})


async def _start(
    servicer: ScriptedRegistry, *, token: str | None = None, bind: bool = True
) -> GrpcServer:
    server = GrpcServer(address="127.0.0.1:0", services=[REGISTRY], auth_token=token)
    await server.start()
    if bind:
        server.bind(lambda s: service_pb2_grpc.add_ModelRegistryServicer_to_server(servicer, s))
        await server.set_serving(True)
    return server


@pytest_asyncio.fixture(loop_scope="session")
async def server() -> AsyncIterator[GrpcServer]:
    started = await _start(ScriptedRegistry(), token=TOKEN)
    yield started
    await started.stop(0)


@pytest_asyncio.fixture(loop_scope="session")
async def stub(server: GrpcServer) -> AsyncIterator[service_pb2_grpc.ModelRegistryStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield service_pb2_grpc.ModelRegistryStub(channel)


async def _health(port: int, service: str = REGISTRY.full_name) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
    return response.status


async def test_not_serving_and_unavailable_until_bound() -> None:
    server = await _start(ScriptedRegistry(), bind=False)
    try:
        assert await _health(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert (
            await _health(server.port, LIVENESS_SERVICE) == health_pb2.HealthCheckResponse.SERVING
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await service_pb2_grpc.ModelRegistryStub(channel).GetModel(
                    rr.GetModelRequest(name="x")
                )
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "starting" in raised.value.details()

        server.bind(
            lambda s: service_pb2_grpc.add_ModelRegistryServicer_to_server(ScriptedRegistry(), s)
        )
        await server.set_serving(True)
        assert await _health(server.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_reflection_lists_the_service(server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in responses:
            names = {s.name for s in response.list_services_response.service}
            break
    assert REGISTRY.full_name in names


async def test_mutating_rpcs_need_the_bearer_token(
    stub: service_pb2_grpc.ModelRegistryStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CreateModel(rr.CreateModelRequest(name="m"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in raised.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub.CreateModel(
            rr.CreateModelRequest(name="m"), metadata=[("authorization", "Bearer nope")]
        )
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

    await stub.CreateModel(
        rr.CreateModelRequest(name="m"), metadata=[("authorization", f"Bearer {TOKEN}")]
    )
    assert (await stub.GetModel(rr.GetModelRequest(name="read-only-needs-no-token"))).model.name


async def test_domain_errors_keep_their_code_and_message(
    stub: service_pb2_grpc.ModelRegistryStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetModel(rr.GetModelRequest(name="missing"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no model named 'missing'"


async def test_unexpected_errors_are_internal_without_internals(
    stub: service_pb2_grpc.ModelRegistryStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetModel(rr.GetModelRequest(name="boom"))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "lathe trace" in raised.value.details()
    assert "secret internals" not in raised.value.details()


async def test_deadline_follows_the_call_into_outgoing_calls() -> None:
    downstream = await _start(ScriptedRegistry())
    upstream = await _start(ScriptedRegistry(downstream=f"127.0.0.1:{downstream.port}"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}") as channel:
            response = await service_pb2_grpc.ModelRegistryStub(channel).GetModel(
                rr.GetModelRequest(name="forward"), timeout=2.0
            )
        # Without propagation the downstream call has no deadline at all ("None").
        remaining = float(response.model.description)
        assert 0 < remaining <= 2.1  # gRPC rounds the timeout header up slightly
    finally:
        await upstream.stop(0)
        await downstream.stop(0)


async def test_shutdown_drains_in_flight_calls() -> None:
    server = await _start(ScriptedRegistry())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = asyncio.ensure_future(
            service_pb2_grpc.ModelRegistryStub(channel).GetModel(rr.GetModelRequest(name="slow"))
        )
        await asyncio.sleep(0.1)
        await server.stop(grace_s=5)
        response = await call
    assert response.model.name == "slow"


async def test_an_error_quoting_a_huge_value_keeps_its_code_with_a_cut_message(
    stub: service_pb2_grpc.ModelRegistryStub,
) -> None:
    # 100 KB in a trailer exceeds gRPC's metadata limit: uncut, the client got
    # RESOURCE_EXHAUSTED instead of the NOT_FOUND the service answered.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetModel(rr.GetModelRequest(name="huge" + "x" * 100_000))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    details = raised.value.details() or ""
    assert details.startswith("no model named 'hugexxx")
    assert details.endswith("(100,021 characters in all)")
    assert len(details) <= 2048
