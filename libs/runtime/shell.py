"""Services whose contract exists before their implementation.

A shell is a real service process (health, reflection, metrics, its own event
store and relay) whose RPCs all answer UNIMPLEMENTED with a message saying so,
never a fake result.
"""

from __future__ import annotations

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from libs.config import ServiceName
from libs.eventstore import EventCatalog
from libs.grpckit import AbortingService
from libs.runtime.spec import ServiceComponents, ServiceContext, ServiceSpec


def shell_spec(name: ServiceName, service: ServiceDescriptor, status: str) -> ServiceSpec:
    """A spec whose every RPC answers UNIMPLEMENTED, explaining ``status``."""
    message = f"{service.full_name} is not implemented yet: {status}"

    def build(_: ServiceContext) -> ServiceComponents:
        handler = AbortingService(service, grpc.StatusCode.UNIMPLEMENTED, message)
        return ServiceComponents(
            registrations=[lambda server: server.add_generic_rpc_handlers([handler])]
        )

    return ServiceSpec(
        name=name, services=(service,), catalog=EventCatalog([]), migrations=(), build=build
    )
