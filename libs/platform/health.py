"""Asking a service whether it is SERVING (gRPC health checking protocol)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def health_status(addr: str, *, service: str = "", timeout_s: float = 1.0) -> str:
    """ "SERVING" or "NOT_SERVING" for ``service`` ("" is the whole server; a name such as
    ``lathe.inference.v1.Inference/credit-default`` is one part of it), "SERVICE_UNKNOWN"
    when the server has no such name (yet), or "UNREACHABLE" when nothing answers."""
    async with grpc.aio.insecure_channel(addr) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
