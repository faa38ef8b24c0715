"""The benchmark report as Markdown: goals by issue first, then every family's tables.

Drawn from the report's JSON data (``bench/report_data.py``) only, so a report built
from an earlier run's files reads exactly like one built right after the run. Every
Lathe number stands in the same table as its baseline from the same run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.goals import format_number

_VERDICTS = {
    "met": "met",
    "missed": "**MISSED**",
    "not measured": "*not measured*",
    "reported": "reported (no goal)",
}
_ROLES = {"baseline": "baseline", "lathe": "Lathe", "diagnostic": "diagnostic"}


def render_markdown(report: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """Markdown for ``report``; ``plots`` maps a plot's key (``goals``, or
    ``<family>/<comparison>`` and ``<family>/<comparison>/histogram``) to its relative path."""
    plots = plots or {}
    lines = [
        "# Lathe benchmark report",
        "",
        *_header(report),
        "",
        "## Goals and figures, by issue",
        "",
        *_goals_table(report["goals"]),
    ]
    if any(goal["reduced_size"] for goal in report["goals"]):
        lines += [
            "",
            "† measured at other than the full-run sizes (e.g. `--quick`): indicative only.",
        ]
    if "goals" in plots:
        lines += ["", f"![Each goal's measured value against its target]({plots['goals']})"]
    for name, family in report["families"].items():
        lines += ["", *_family(name, family, plots)]
    for name, error in report.get("errors", {}).items():
        lines += ["", f"## {name}: FAILED", "", "```", error, "```"]
    return "\n".join(lines) + "\n"


def _header(report: dict[str, Any]) -> list[str]:
    machine, infra = report.get("machine", {}), report.get("infrastructure", {})
    summary = report["summary"]
    sources = report.get("sources", [])
    lines = [f"Generated {report['generated_at']} from {len(sources)} run(s):", ""]
    for source in sources:
        command = " ".join(source.get("command") or [])
        lines.append(
            f"- `{source['file']}`: `{command}`, {source.get('started_at')} to "
            f"{source.get('finished_at')} ({', '.join(source['families']) or 'no families'})"
        )
    lines += [
        "",
        f"Machine: {machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}), "
        f"Python {machine.get('python', '?')}, "
        f"PostgreSQL {infra.get('postgres', {}).get('version', '?')}, "
        f"nats-server {infra.get('nats', {}).get('version', '?')}; load average "
        f"{_load(machine.get('load_average_start'))} -> {_load(machine.get('load_average_end'))}.",
        "",
        f"**Goals: {summary.get('met', 0)} met, {summary.get('missed', 0)} missed, "
        f"{summary.get('not measured', 0)} not measured; "
        f"{summary.get('reported', 0)} figures reported without a goal.**",
    ]
    embedded = [k for k in ("postgres", "nats") if infra.get(k, {}).get("embedded")]
    if embedded:
        lines += ["", f"Note: embedded {' and '.join(embedded)}, not the machine's servers."]
    return lines


def _goals_table(goals: Sequence[dict[str, Any]]) -> list[str]:
    rows = [
        [
            "issue",
            "family",
            "figure",
            "Lathe",
            "baseline (same run)",
            "compared",
            "goal",
            "verdict",
        ]
    ]
    for goal in goals:
        rows.append(
            [
                "earlier" if goal["issue"] is None else str(goal["issue"]),
                f"`{goal['family']}`",
                goal["description"],
                _figure(goal["figure"]),
                _baseline(goal),
                _compared(goal),
                goal["goal"] or "—",
                _verdict(goal),
            ]
        )
    return _table(rows)


def _figure(figure: dict[str, Any] | None) -> str:
    return "—" if figure is None else format_number(figure["value"], figure["unit"])


def _baseline(goal: dict[str, Any]) -> str:
    if goal["baseline"] is None:
        return "—"
    text = _figure(goal["baseline"])
    parts = goal["baseline_parts"]
    if len(parts) > 1:
        text += " (" + " + ".join(format_number(p["value"]) for p in parts) + ")"
    return text


def _compared(goal: dict[str, Any]) -> str:
    if goal["compared"] is None or goal["compare"] == "value":
        return "—"
    return format_number(goal["compared"], goal["compared_unit"])


def _verdict(goal: dict[str, Any]) -> str:
    text = _VERDICTS[goal["status"]]
    if goal["status"] == "not measured":
        return f"{text}: {goal['reason']}" if goal["reason"] else text
    return text + ("†" if goal["reduced_size"] else "")


def _family(name: str, family: dict[str, Any], plots: dict[str, str]) -> list[str]:
    busy = family.get("conditions", {}).get("machine_cpu_busy_pct")
    facts = [f"{family.get('wall_s', 0):.1f} s"]
    if busy is not None:
        facts.append(f"machine CPU {busy:.0f}% busy")
    facts.append("full size" if family.get("full_size") else "reduced size")
    facts.append(f"from `{family.get('source')}`")
    lines = [f"## {name}", "", f"{family.get('summary', '')} ({'; '.join(facts)})"]
    for comparison in family.get("comparisons", []):
        lines += ["", *_comparison(comparison)]
        key = f"{name}/{comparison['key']}"
        for plot_key, alt in ((key, "plot"), (f"{key}/histogram", "latency histogram")):
            if plot_key in plots:
                lines += ["", f"![{comparison['key']}: {alt}]({plots[plot_key]})"]
    notes = family.get("notes", [])
    if notes:
        lines += ["", *(f"- {_escape(note)}" for note in notes)]
    own = family.get("goals", [])
    if own:
        lines += ["", "The family's own checks:", ""]
        lines += [
            f"- [{'met' if g['met'] else 'MISSED'}] {_escape(g['description'])}: "
            f"{format_number(g['measured'])} {g['unit']} (target {g['comparator']} "
            f"{format_number(g['target'])})"
            for g in own
        ]
    return lines


def _comparison(comparison: dict[str, Any]) -> list[str]:
    columns = comparison.get("columns", [])
    variants = comparison["variants"]
    units = {
        column: next((v["metrics"][column]["unit"] for v in variants if column in v["metrics"]), "")
        for column in columns
    }
    header = [
        "",
        "variant",
        *(f"{c} ({units[c]})" if units[c] else c for c in columns),
        f"vs baseline ({comparison['headline']})",
    ]
    rows = [header]
    for variant in comparison["variants"]:
        ratio = variant.get("vs_baseline")
        rows.append(
            [
                _ROLES.get(variant["role"], variant["role"]),
                variant["label"],
                *(_metric(variant, c) for c in columns),
                "" if ratio is None else f"{ratio:.2f}x",
            ]
        )
    lines = [f"### {_escape(comparison['title'])}", "", *_table(rows)]
    notes = comparison.get("notes", [])
    if notes:
        lines += ["", *(f"- {_escape(note)}" for note in notes)]
    return lines


def _metric(variant: dict[str, Any], column: str) -> str:
    metric = variant["metrics"].get(column)
    if metric is None or metric.get("value") is None:
        return "—"
    value = metric["value"]
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a"
    return format_number(value)


def _table(rows: list[list[str]]) -> list[str]:
    cells = [[_escape(cell) for cell in row] for row in rows]
    head, *body = cells
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(row) + " |" for row in body),
    ]


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"
