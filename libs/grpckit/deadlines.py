"""Deadline propagation: an RPC's remaining time follows it into outgoing calls.

The server interceptor records each call's deadline; ``open_channel``'s client
interceptor gives outgoing calls without an explicit timeout what is left of it,
and handlers can bound their own waits (e.g. SQL) with ``remaining_time_s``.
"""

from __future__ import annotations

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "lathe_grpc_deadline", default=None
)


def set_deadline_from_remaining(remaining_s: float | None) -> contextvars.Token[float | None]:
    deadline = None if remaining_s is None else time.monotonic() + remaining_s
    return _deadline.set(deadline)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining_time_s() -> float | None:
    """Seconds left before the current RPC's deadline; None when it has none."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
