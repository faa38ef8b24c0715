"""SQL spans on a real Postgres: recorded inside recorded traces, skipped where dropped."""

from __future__ import annotations

import asyncpg
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

SQL = "SELECT $1::int + 1"


def _sql_spans(exporter: InMemorySpanExporter, trace_id: int) -> list[str]:
    return [
        span.name
        for span in exporter.get_finished_spans()
        if span.kind == SpanKind.CLIENT and span.context.trace_id == trace_id
    ]


async def test_queries_inside_a_recorded_trace_are_spans_of_it(
    db_pool: asyncpg.Pool, span_exporter: InMemorySpanExporter
) -> None:
    with trace.get_tracer(__name__).start_as_current_span("request") as request:
        assert await db_pool.fetchval(SQL, 1) == 2
        async with db_pool.acquire() as conn, conn.transaction():
            rows = [row[0] async for row in conn.cursor("SELECT generate_series(1, 3)")]
        assert rows == [1, 2, 3]
    names = _sql_spans(span_exporter, request.get_span_context().trace_id)
    assert names.count("SELECT") == 1
    assert "CURSOR: SELECT" in names


async def test_queries_in_an_unsampled_trace_make_no_span_and_still_answer(
    db_pool: asyncpg.Pool, span_exporter: InMemorySpanExporter
) -> None:
    trace_id = 0x5BF92F3577B34DA6A3CE929D0E0E4736
    unsampled = NonRecordingSpan(
        SpanContext(trace_id, 0x00F067AA0BA902B7, is_remote=True, trace_flags=TraceFlags(0))
    )
    with trace.use_span(unsampled):
        assert await db_pool.fetchval(SQL, 41) == 42
        async with db_pool.acquire() as conn, conn.transaction():
            rows = [row[0] async for row in conn.cursor("SELECT generate_series(1, 3)")]
        assert rows == [1, 2, 3]
    assert _sql_spans(span_exporter, trace_id) == []
