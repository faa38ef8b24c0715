"""The human-readable side of a report: one table per comparison, then the goals.

Baseline first in every table, so each Lathe number is read against the raw
building block measured minutes earlier on the same machine.
"""

from __future__ import annotations

import math

from bench.results import Comparison, FamilyResult, Measurement, Report, Role, Value

_ROLE_TAGS = {Role.BASELINE: "baseline", Role.LATHE: "lathe", Role.DIAGNOSTIC: "diag"}


def render(report: Report) -> str:
    machine = report.machine
    infra = report.infrastructure
    lines = [
        f"Lathe benchmarks, {report.started_at}",
        f"  {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"Python {machine.get('python')}, "
        f"PostgreSQL {infra.get('postgres', {}).get('version')}, "
        f"nats-server {infra.get('nats', {}).get('version')}, "
        f"load average {_load(machine.get('load_average_start'))} -> "
        f"{_load(machine.get('load_average_end'))}",
    ]
    if machine.get("telemetry"):
        lines.append(f"  NOTE: {machine['telemetry']}")
    embedded = [k for k in ("postgres", "nats") if infra.get(k, {}).get("embedded")]
    if embedded:
        lines.append(f"  NOTE: embedded {' and '.join(embedded)} (not the machine's servers)")
    for family in report.families:
        lines.extend(["", *_family(family)])
    for name, error in report.errors.items():
        lines.extend(["", f"== {name}: FAILED", f"  {error}"])
    goals = [(family.name, goal) for family in report.families for goal in family.goals]
    if goals:
        lines.extend(["", "Goals"])
        for _, goal in goals:
            verdict = "MET   " if goal.met else "MISSED"
            lines.append(
                f"  [{verdict}] {goal.description}: measured {_number(goal.measured)} {goal.unit}"
                f" (target {goal.comparator} {_number(goal.target)})"
            )
    return "\n".join(lines)


def _family(family: FamilyResult) -> list[str]:
    busy = family.conditions.get("machine_cpu_busy_pct")
    busy_text = f", machine CPU {busy:.0f}% busy (all processes)" if busy is not None else ""
    lines = [f"== {family.name}: {family.summary}  ({family.wall_s:.1f}s{busy_text})"]
    for comparison in family.comparisons:
        lines.extend(["", *_comparison(comparison)])
    lines.extend(f"  note: {note}" for note in family.notes)
    return lines


def _comparison(comparison: Comparison) -> list[str]:
    headers = ["", "variant", *comparison.columns, f"vs baseline ({comparison.headline})"]
    units = ["", "", *(_unit(comparison, c) for c in comparison.columns), ""]
    rows = [headers, units]
    for variant in comparison.variants:
        ratio = comparison.ratio(variant) if variant.role is not Role.BASELINE else None
        rows.append(
            [
                _ROLE_TAGS[variant.role],
                variant.label,
                *(_cell(variant, column) for column in comparison.columns),
                "" if ratio is None else f"{ratio:.2f}x",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    lines = [comparison.title]
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    lines.extend(f"  note: {note}" for note in comparison.notes)
    return lines


def _unit(comparison: Comparison, column: str) -> str:
    for variant in comparison.variants:
        if column in variant.metrics:
            return variant.metrics[column].unit
    return ""


def _cell(variant: Measurement, column: str) -> str:
    value: Value | None = variant.metrics.get(column)
    if value is None:
        return "-"
    return _number(value.value, value.unit)


def _number(number: float, unit: str = "") -> str:
    if isinstance(number, float) and not math.isfinite(number):
        return "n/a"
    if unit == "ms":
        return f"{number:.2f}" if number < 100 else f"{number:,.0f}"
    if abs(number) >= 1000 or unit in {"events/s", "events"}:
        return f"{number:,.0f}"
    return f"{number:g}"


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"
