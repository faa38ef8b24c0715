"""Which spans are kept: the traces requests start, not background polling.

Database and broker calls made outside any trace (the relay polling for new
events, health watchdogs, pool resets) would otherwise each start a trace of
their own, burying the request traces on-call engineers look for.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.util.types import Attributes


class SkipUntracedClientCalls(Sampler):
    """Drops root CLIENT spans; keeps ``ratio`` of other new traces; children follow parents."""

    def __init__(self, ratio: float = 1.0) -> None:
        root = ALWAYS_ON if ratio >= 1.0 else TraceIdRatioBased(ratio)
        self._delegate = ParentBased(root)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: object = None,
    ) -> SamplingResult:
        has_parent = get_current_span(parent_context).get_span_context().is_valid
        if not has_parent and kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "SkipUntracedClientCalls"
