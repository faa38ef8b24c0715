"""Servicers registered after the server started.

The server must answer health checks (NOT_SERVING) while the service is still
connecting to Postgres and NATS, but its servicers need those connections to be
built. Generated ``add_*Servicer_to_server`` functions accept this collector in
place of the server; calls are routed to it once it is bound, and meanwhile
answer UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grpc


class LateBoundHandlers(grpc.GenericRpcHandler):
    """A generic handler whose method handlers arrive after server start."""

    def __init__(self) -> None:
        self._generic: tuple[grpc.GenericRpcHandler, ...] = ()

    @property
    def bound(self) -> bool:
        return bool(self._generic)

    # The part of the server API that generated registration functions call.
    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        self._generic = (*self._generic, *generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        """Registered handlers are a server-side fast path; the generic route suffices."""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        for handler in self._generic:
            method_handler = handler.service(handler_call_details)
            if method_handler is not None:
                return method_handler
        return None
