"""Who is calling, read from request metadata, for event metadata and audit."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

ACTOR_KEY = "lathe-actor"
REQUEST_ID_KEY = "x-request-id"


@dataclass(frozen=True)
class Caller:
    actor: str
    """From the ``lathe-actor`` metadata; "anonymous" when absent."""
    request_id: str
    """From ``x-request-id``; "" when absent."""


def caller_of(context: grpc.aio.ServicerContext) -> Caller:
    values = dict(context.invocation_metadata() or ())
    actor = str(values.get(ACTOR_KEY, "")).strip() or "anonymous"
    return Caller(actor=actor[:200], request_id=str(values.get(REQUEST_ID_KEY, ""))[:200])
