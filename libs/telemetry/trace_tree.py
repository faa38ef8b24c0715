"""Rendering one trace, gathered from span files, as an indented tree."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from rich.tree import Tree

from libs.telemetry.span_files import SpanRecord


def build_trace_tree(trace_id: str, spans: Iterable[SpanRecord]) -> Tree | None:
    """A rich Tree of the spans of ``trace_id`` (None when no span has that id)."""
    members = [s for s in spans if s.trace_id == trace_id]
    if not members:
        return None
    known = {s.span_id for s in members}
    children: dict[str, list[SpanRecord]] = defaultdict(list)
    roots: list[SpanRecord] = []
    for span in members:
        if span.parent_span_id and span.parent_span_id in known:
            children[span.parent_span_id].append(span)
        else:
            roots.append(span)
    start = min(s.start_ns for s in members)
    tree = Tree(f"trace {trace_id} ({len(members)} spans)")

    def add(parent: Tree, span: SpanRecord) -> None:
        offset_ms = (span.start_ns - start) / 1e6
        status = "" if span.status != "ERROR" else " [red]ERROR[/red]"
        node = parent.add(
            f"[bold]{span.service}[/bold] {span.name} "
            f"[dim]{span.kind.lower()} +{offset_ms:.1f}ms {span.duration_ms:.2f}ms[/dim]{status}"
        )
        for child in sorted(children[span.span_id], key=lambda s: s.start_ns):
            add(node, child)

    for root in sorted(roots, key=lambda s: s.start_ns):
        add(tree, root)
    return tree
