"""Every RPC of every Lathe service, found from the descriptors, and a generic way to call it.

The services are the members of ``ServiceName``; each one's ``SPEC`` lists the gRPC
services it exposes, and their descriptors list the methods. So nothing here names
an RPC: a method added to a proto, or a service added to the platform, is fuzzed
the next time the suite runs. Calls go through generic multi-callables that take
either a message or raw bytes (so undecodable bodies can be sent too) and return
the reply bytes undecoded (a reply that does not decode is itself a finding).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from libs.config import ServiceName
from libs.runtime import ServiceSpec
from tests.fuzz.descriptor_strategies import message_class

Body = Message | bytes
"""What one request message on the wire is: a message, or raw bytes sent as they are."""


@dataclass(frozen=True)
class FuzzTarget:
    """One RPC of one service."""

    service: ServiceName
    """The Lathe service hosting it (names its Postgres schema)."""
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def read_only(self) -> bool:
        """Marked NO_SIDE_EFFECTS in the proto: it must never write anything."""
        options = self.method.GetOptions()
        return options.idempotency_level == options.NO_SIDE_EFFECTS

    @property
    def request_type(self) -> type[Message]:
        return message_class(self.method.input_type)

    @property
    def response_type(self) -> type[Message]:
        return message_class(self.method.output_type)

    @property
    def client_streaming(self) -> bool:
        return self.method.client_streaming

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming

    @property
    def test_id(self) -> str:
        return f"{self.service.display_name}.{self.method.name}"

    def __str__(self) -> str:
        return self.test_id


def spec_of(service: ServiceName) -> ServiceSpec:
    """The service's ``SPEC`` (``services.<name>.service``)."""
    spec = importlib.import_module(f"services.{service.value}.service").SPEC
    assert isinstance(spec, ServiceSpec), f"services.{service.value}.service.SPEC"
    return spec


def discover_targets() -> list[FuzzTarget]:
    """Every method of every gRPC service of every Lathe service, in a stable order."""
    return [
        FuzzTarget(name, method)
        for name in ServiceName
        for service in spec_of(name).services
        for method in service.methods
    ]


def _serialize(body: Body) -> bytes:
    return body if isinstance(body, bytes) else body.SerializeToString()


def _raw(data: bytes) -> bytes:
    return data


MAX_REPLY_MESSAGES = 10_000
"""A server stream longer than this is cut off (a fuzzed request made it run away)."""


async def call(
    channel: grpc.aio.Channel,
    target: FuzzTarget,
    bodies: Sequence[Body],
    *,
    metadata: Sequence[tuple[str, str]],
    timeout_s: float,
) -> list[bytes]:
    """Call ``target`` with ``bodies`` (exactly one unless client-streaming); the replies.

    Raises ``grpc.aio.AioRpcError`` for a non-OK status, as the stubs do.
    """
    kinds = (target.client_streaming, target.server_streaming)
    factory = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[kinds]
    multi = factory(target.path, request_serializer=_serialize, response_deserializer=_raw)
    if not target.client_streaming:
        assert len(bodies) == 1, f"{target} takes one request, got {len(bodies)}"
        request: object = bodies[0]
    else:
        request = iter(list(bodies))
    rpc = multi(request, timeout=timeout_s, metadata=tuple(metadata))
    if not target.server_streaming:
        return [await rpc]
    replies: list[bytes] = []
    async for reply in rpc:
        replies.append(reply)
        if len(replies) >= MAX_REPLY_MESSAGES:
            rpc.cancel()
            break
    return replies
