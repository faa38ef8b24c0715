"""Asking a service whether it is SERVING (gRPC health checking protocol)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def health_status(addr: str, *, timeout_s: float = 1.0) -> str:
    """ "SERVING", "NOT_SERVING", or "UNREACHABLE" when nothing answers."""
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
