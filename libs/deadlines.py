"""The current request's deadline, shared by the code that sets it and the code that obeys it.

The gRPC kit's interceptor records each call's deadline here; outgoing calls
(``libs.grpckit.open_channel``) and database statements (``libs.db``'s pool) are
bounded by what is left of it. It lives beneath both so neither imports the other
for it. Outside a request (background work) there is no deadline.
"""

from __future__ import annotations

import contextvars
import time

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "lathe_request_deadline", default=None
)


def set_deadline_from_remaining(remaining_s: float | None) -> contextvars.Token[float | None]:
    """Record that the current request must finish within ``remaining_s`` (None: no deadline)."""
    deadline = None if remaining_s is None else time.monotonic() + remaining_s
    return _deadline.set(deadline)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def remaining_time_s() -> float | None:
    """Seconds left before the current request's deadline; None when it has none."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
