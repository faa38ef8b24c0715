"""What the protos say about each RPC, read once from the service descriptors."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def mutating_methods(*services: ServiceDescriptor) -> frozenset[str]:
    """Paths of the RPCs that change state: all but those marked NO_SIDE_EFFECTS."""
    paths = set()
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if options.idempotency_level != options.NO_SIDE_EFFECTS:
                paths.add(method_path(method))
    return frozenset(paths)


def aborting_handlers(
    services: tuple[ServiceDescriptor, ...], code: grpc.StatusCode, message: str
) -> dict[str, grpc.RpcMethodHandler]:
    """Per RPC of ``services``, a handler that answers ``code`` with ``message``."""

    async def _abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    return {
        method_path(method): factories[(method.client_streaming, method.server_streaming)](_abort)
        for service in services
        for method in service.methods
    }


class AbortingService(grpc.GenericRpcHandler):
    """Answers every RPC of a service with one status: an honest shell."""

    def __init__(self, service: ServiceDescriptor, code: grpc.StatusCode, message: str) -> None:
        self._handlers = aborting_handlers((service,), code, message)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)
