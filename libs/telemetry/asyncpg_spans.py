"""SQL spans for asyncpg, paid for only inside a recorded trace."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.trace import get_current_span

_Query = Callable[..., Awaitable[Any]]


class RecordedTraceAsyncPGInstrumentor(AsyncPGInstrumentor):
    """OpenTelemetry's asyncpg instrumentation, skipped where its span would be dropped.

    The platform's sampler (``sampling.SkipUntracedClientCalls``) drops a query's span
    unless the current span context is valid and sampled: root CLIENT spans are dropped and
    children follow their parent's sampled flag. OpenTelemetry's instrumentor still parses
    the SQL, builds the attributes and opens and closes a span for every query; skipping it
    exactly where the sampler would drop the span loses nothing and saved ~0.05 ms of each
    registry ``ResolveAlias`` at 1% tracing.
    """

    async def _do_execute(self, func: _Query, instance: Any, args: Any, kwargs: Any) -> Any:
        if not _would_be_sampled():
            return await func(*args, **kwargs)
        return await super()._do_execute(func, instance, args, kwargs)

    async def _do_cursor_execute(self, func: _Query, instance: Any, args: Any, kwargs: Any) -> Any:
        if not _would_be_sampled():
            return await func(*args, **kwargs)
        return await super()._do_cursor_execute(func, instance, args, kwargs)

    async def _do_prepared_execute(
        self, func: _Query, instance: Any, args: Any, kwargs: Any
    ) -> Any:
        if not _would_be_sampled():
            return await func(*args, **kwargs)
        return await super()._do_prepared_execute(func, instance, args, kwargs)


def _would_be_sampled() -> bool:
    """The sampler's decision for a CLIENT span here (``SkipUntracedClientCalls``)."""
    context = get_current_span().get_span_context()
    return context.is_valid and context.trace_flags.sampled
