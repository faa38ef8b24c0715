"""Deadline propagation: an RPC's remaining time follows it into outgoing calls.

The server interceptor records each call's deadline; ``open_channel``'s client
interceptor gives outgoing calls without an explicit timeout what is left of it,
and the database pool (``libs.db``) bounds every statement by it. Handlers can
bound their own waits with ``remaining_time_s``. The state itself lives in
``libs.deadlines``, beneath both the kit and the pool.
"""

from __future__ import annotations

from libs.deadlines import (
    no_deadline,
    remaining_time_s,
    reset_deadline,
    set_deadline_from_remaining,
)

__all__ = [
    "no_deadline",
    "remaining_time_s",
    "reset_deadline",
    "set_deadline_from_remaining",
]
