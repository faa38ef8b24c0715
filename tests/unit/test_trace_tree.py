"""Span files and the trace tree `lathe trace` renders (pure logic, temp files only)."""

from __future__ import annotations

import io
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from rich.console import Console

from libs.telemetry.span_files import JsonLinesSpanExporter, read_span_files
from libs.telemetry.trace_tree import build_trace_tree


def _render(tree: object) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(tree)
    return buffer.getvalue()


def test_spans_from_two_processes_render_as_one_tree(tmp_path: Path) -> None:
    def provider(service: str) -> TracerProvider:
        p = TracerProvider(resource=Resource.create({"service.name": service}))
        p.add_span_processor(
            SimpleSpanProcessor(JsonLinesSpanExporter(tmp_path / f"{service}.jsonl"))
        )
        return p

    client, server = provider("client-app"), provider("model-registry")
    with client.get_tracer("t").start_as_current_span("call", kind=SpanKind.CLIENT) as root:
        trace_id = f"{root.get_span_context().trace_id:032x}"
        tracer = server.get_tracer("t")
        with (
            tracer.start_as_current_span("CreateModel", kind=SpanKind.SERVER),
            tracer.start_as_current_span("eventstore.append"),
        ):
            pass
    with client.get_tracer("t").start_as_current_span("unrelated"):
        pass

    spans = list(read_span_files(tmp_path))
    text = _render(build_trace_tree(trace_id, spans))

    assert f"trace {trace_id} (3 spans)" in text
    assert text.index("call") < text.index("CreateModel") < text.index("eventstore.append")
    assert "unrelated" not in text
    assert "model-registry" in text


def test_unknown_trace_gives_none_and_torn_lines_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text('{"trace_id": "abc"\nnot json\n')

    assert list(read_span_files(tmp_path)) == []
    assert build_trace_tree("0" * 32, []) is None
