"""A server reachable beyond the machine without an auth token refuses to start."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.model_registry.v1 import service_pb2
from libs.grpckit import GrpcServer

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]


@pytest.fixture(autouse=True)
def _no_insecure_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATHE_INSECURE", raising=False)


async def _starts(server: GrpcServer) -> bool:
    port = await server.start()
    host = "[::1]" if server.address.startswith("[::1]") else "127.0.0.1"
    try:
        async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(0)
    return True


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0", ":0"])
async def test_non_loopback_without_token_refuses_to_start(address: str) -> None:
    server = GrpcServer(address=address, services=[REGISTRY])

    with pytest.raises(RuntimeError, match="LATHE_AUTH_TOKEN") as refused:
        await server.start()
    assert "LATHE_INSECURE=1" in str(refused.value)
    assert server.port is None


async def test_non_loopback_starts_with_a_token_or_explicit_insecure() -> None:
    assert await _starts(GrpcServer(address="0.0.0.0:0", services=[REGISTRY], auth_token="t"))
    assert await _starts(GrpcServer(address="0.0.0.0:0", services=[REGISTRY], insecure=True))


async def test_the_kit_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``insecure`` is the caller's (the host passes its settings): one source of truth."""
    monkeypatch.setenv("LATHE_INSECURE", "1")
    server = GrpcServer(address="0.0.0.0:0", services=[REGISTRY])

    with pytest.raises(RuntimeError, match="LATHE_AUTH_TOKEN"):
        await server.start()


@pytest.mark.parametrize("address", ["127.0.0.1:0", "localhost:0", "[::1]:0"])
async def test_loopback_needs_no_token(address: str) -> None:
    assert await _starts(GrpcServer(address=address, services=[REGISTRY]))
