"""Retrying a Lathe mutation safely: one client request id per logical change.

After UNAVAILABLE or DEADLINE_EXCEEDED a caller cannot know whether its change was
applied. Every mutating Lathe request has a ``request_id`` field: a retry that sends the
same id gets the first attempt's reply instead of applying the change again
(docs/adr/0015-client-request-ids.md). So the SDK stamps each logical call with a fresh
id (unless the caller chose one, e.g. to retry across processes) and reuses it for its
own retries.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

T = TypeVar("T")

AMBIGUOUS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Failures after which the change may or may not have been applied: retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a mutation is retried after an ambiguous failure."""

    attempts: int = 4
    """Tries in all, the first included; 1 turns retrying off."""
    first_backoff_s: float = 0.2
    """Wait before the first retry; doubled for each further one."""
    max_backoff_s: float = 3.0
    """Longest wait between two tries."""
    attempt_timeout_s: float | None = None
    """Deadline of each try (None: only the channel's or the caller's deadline)."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"a retry policy needs at least 1 attempt, got {self.attempts}")


DEFAULT_RETRY = RetryPolicy()
"""Four tries over about 1.4 s of back-off: rides out a restart or a dropped connection."""


def new_request_id() -> str:
    """A fresh client request id (a random UUID)."""
    return str(uuid.uuid4())


async def with_retries(policy: RetryPolicy, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` until it succeeds, fails otherwise, or the tries run out.

    ``attempt`` must send the same request id every time: that is what makes it safe.
    """
    backoff = policy.first_backoff_s
    for remaining in range(policy.attempts - 1, -1, -1):
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() not in AMBIGUOUS or remaining == 0:
                raise
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, policy.max_backoff_s)
    raise AssertionError("unreachable: the last try returns or raises")
