"""Spans written as JSON lines under ``$LATHE_HOME/traces`` when no collector is set.

This keeps traces inspectable in development: ``lathe trace <trace_id>`` reads
these files back and renders the trace as a tree.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

_ROTATE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SpanRecord:
    """One finished span as stored in a span file."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, object]

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def span_to_record(span: ReadableSpan) -> SpanRecord:
    context = span.get_span_context()
    parent = span.parent
    return SpanRecord(
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_span_id=f"{parent.span_id:016x}" if parent is not None else "",
        name=span.name,
        service=str(span.resource.attributes.get("service.name", "")),
        kind=span.kind.name,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or 0,
        status=span.status.status_code.name,
        attributes={k: _jsonable(v) for k, v in (span.attributes or {}).items()},
    )


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return value


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one JSON line; rotates the file past 64 MiB."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_record(s).__dict__) + "\n" for s in spans)
        with self._lock:
            if self._path.exists() and self._path.stat().st_size > _ROTATE_BYTES:
                self._path.replace(self._path.with_suffix(".1.jsonl"))
            with self._path.open("a", encoding="utf-8") as handle:
                handle.write(lines)
        return SpanExportResult.SUCCESS


def read_span_files(directory: Path) -> Iterator[SpanRecord]:
    """Every span recorded under ``directory`` (skips lines torn by a crash)."""
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    yield SpanRecord(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    continue
