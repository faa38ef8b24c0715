"""Replies a servicer has already serialized.

A handler that builds its reply as protobuf wire bytes (the feature store's online
reads: thousands of values per reply) returns ``Encoded(data)``; the kit's
interceptor sends those bytes as they are instead of parsing them into a message
only for gRPC to serialize it again. The bytes must be a valid encoding of the
method's response type: clients parse them as one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    """A response message's wire bytes."""


def allowing_encoded(
    serializer: Callable[[Any], bytes] | None,
) -> Callable[[Any], bytes] | None:
    """``serializer``, except that ``Encoded`` replies pass through untouched."""
    if serializer is None:
        return None
    serialize = serializer

    def serialize_or_pass(response: Any) -> bytes:
        if type(response) is Encoded:
            return response.data
        return serialize(response)

    return serialize_or_pass
