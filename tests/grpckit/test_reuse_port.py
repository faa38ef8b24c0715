"""Several servers share one port (SO_REUSEPORT) only when every one of them asks to."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.model_registry.v1 import service_pb2
from libs.grpckit import GrpcServer

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]


async def _answers(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=REGISTRY.full_name), timeout=5
        )
    return reply.status in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )


async def test_servers_share_a_port_when_each_asks() -> None:
    first = GrpcServer(address="127.0.0.1:0", services=[REGISTRY], reuse_port=True)
    port = await first.start()
    second = GrpcServer(address=f"127.0.0.1:{port}", services=[REGISTRY], reuse_port=True)
    try:
        assert await second.start() == port
        await first.set_serving(True)
        await first.stop(0)  # the second one keeps the port answering
        assert await _answers(port)
    finally:
        await first.stop(0)
        await second.stop(0)


@pytest.mark.parametrize(
    ("first_shares", "second_shares"), [(False, False), (True, False), (False, True)]
)
async def test_a_second_server_on_a_port_in_use_fails_unless_both_share(
    first_shares: bool, second_shares: bool
) -> None:
    first = GrpcServer(address="127.0.0.1:0", services=[REGISTRY], reuse_port=first_shares)
    port = await first.start()
    second = GrpcServer(address=f"127.0.0.1:{port}", services=[REGISTRY], reuse_port=second_shares)
    try:
        with pytest.raises(RuntimeError, match="is another process using it"):
            await second.start()
        assert await _answers(port)
    finally:
        await first.stop(0)
        await second.stop(0)
