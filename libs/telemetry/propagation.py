"""W3C trace context in and out of string carriers (event rows, NATS headers)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def current_traceparent() -> str:
    """The active span's ``traceparent`` header value, or "" outside any trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def context_from_traceparent(traceparent: str) -> Context:
    """A context whose remote parent is ``traceparent`` (empty: a new root)."""
    if not traceparent:
        return Context()
    return _PROPAGATOR.extract({"traceparent": traceparent})


def inject_context(headers: MutableMapping[str, str], *, context: Context | None = None) -> None:
    """Write the trace context (default: the active span's) into ``headers``."""
    _PROPAGATOR.inject(headers, context=context)


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by ``headers`` (a new root when there is none)."""
    return _PROPAGATOR.extract(dict(headers or {}))
