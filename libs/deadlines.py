"""The current request's deadline, shared by the code that sets it and the code that obeys it.

The gRPC kit's interceptor records each call's deadline here; outgoing calls
(``libs.grpckit.open_channel``) and database statements (``libs.db``'s pool) are
bounded by what is left of it. It lives beneath both so neither imports the other
for it. Outside a request (background work) there is no deadline.

Tasks a handler starts inherit its context, deadline included: subtasks it awaits
(``asyncio.gather``) are bounded by the call's deadline, as they should be. Work it
leaves running after it replies is not: the deadline ends with the call
(``reset_deadline``), so such a task is unbounded from then on. A task meant to outlive
the call from its start should run inside ``no_deadline()``.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _Deadline:
    __slots__ = ("at", "ended")

    def __init__(self, at: float) -> None:
        self.at = at
        """``time.monotonic()`` by which the request must be answered."""
        self.ended = False
        """Set when the request ended: tasks it left behind are no longer bound by it."""


_deadline: contextvars.ContextVar[_Deadline | None] = contextvars.ContextVar(
    "lathe_request_deadline", default=None
)


def set_deadline_from_remaining(remaining_s: float | None) -> contextvars.Token[_Deadline | None]:
    """Record that the current request must finish within ``remaining_s`` (None: no deadline)."""
    deadline = None if remaining_s is None else _Deadline(time.monotonic() + remaining_s)
    return _deadline.set(deadline)


def reset_deadline(token: contextvars.Token[_Deadline | None]) -> None:
    """The request ended: forget its deadline, here and in tasks it started."""
    current = _deadline.get()
    if current is not None:
        current.ended = True
    _deadline.reset(token)


def remaining_time_s() -> float | None:
    """Seconds left before the current request's deadline; None when it has none."""
    deadline = _deadline.get()
    if deadline is None or deadline.ended:
        return None
    return max(0.0, deadline.at - time.monotonic())


@contextmanager
def no_deadline() -> Iterator[None]:
    """Run the block (e.g. ``asyncio.create_task`` of background work) outside any deadline."""
    token = _deadline.set(None)
    try:
        yield
    finally:
        _deadline.reset(token)
