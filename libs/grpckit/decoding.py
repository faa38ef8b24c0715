"""Request decoding that answers INVALID_ARGUMENT for bad bytes, never UNKNOWN.

grpc.aio calls a method's request deserializer before any handler or interceptor
code runs; if it raises, the caller gets UNKNOWN with the exception's class and text
(Python internals) and the server logs a traceback. The kit's interceptor replaces
each deserializer with one from ``checked_deserializer``: it parses, runs the
request's generic checks (``request_checks``), and on failure returns a ``Rejected``
in place of the request (unary requests: the interceptor's wrapper answers
INVALID_ARGUMENT before the handler runs) or raises ``InvalidArgument`` from the
request stream (streaming requests: the handler's ``async for`` raises it and the
interceptor maps it like any domain error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from libs.errors import InvalidArgument
from libs.grpckit.request_checks import checks_for

Deserializer = Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Stands in for a unary request that failed decoding or its generic checks."""

    message: str
    """The INVALID_ARGUMENT message: what is wrong and where."""


def checked_deserializer(deserializer: Deserializer, *, streaming: bool) -> Deserializer:
    """``deserializer`` (a generated ``Message.FromString``) with errors and checks handled."""
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    type_name = descriptor.full_name if descriptor is not None else "request message"
    checks = checks_for(descriptor) if descriptor is not None else None

    def reject(problem: str) -> Rejected:
        message = f"the request is not a valid {type_name}: {problem}"
        if streaming:
            raise InvalidArgument(message)
        return Rejected(message)

    if checks is None:

        def decode(data: bytes) -> Any:
            try:
                return deserializer(data)
            except Exception as exc:
                return reject(_parse_problem(exc))

        return decode

    def decode_and_check(data: bytes) -> Any:
        try:
            message = deserializer(data)
        except Exception as exc:
            return reject(_parse_problem(exc))
        problem = checks.problem(message, data)
        if problem is not None:
            return reject(problem)
        return message

    return decode_and_check


def _parse_problem(exc: Exception) -> str:
    detail = ""
    if isinstance(exc, DecodeError):
        # upb: "Error parsing message with type 'x.Y': Wire format was corrupt"
        _, _, detail = str(exc).partition("': ")
    return (
        f"its bytes do not parse as that message ({detail or 'malformed protobuf encoding'}); "
        "send the message type the RPC's proto declares, serialized by a protobuf library"
    )
