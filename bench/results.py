"""What a benchmark run produces: measurements side by side with their baselines.

Every Lathe number is reported next to the raw building block it is built on
(asyncpg, JetStream, gRPC), measured in the same run on the same machine, so a
reader can tell Lathe's overhead from the machine's speed. The dataclasses here
are the JSON schema of ``bench/results/*.json``; ``to_json`` gives plain dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """What a variant is for: the reference, the thing under test, or a probe."""

    BASELINE = "baseline"
    """The raw building block (asyncpg, nats-py) doing the same work."""
    LATHE = "lathe"
    """Lathe's library or service doing the work."""
    DIAGNOSTIC = "diagnostic"
    """Not a goal; isolates one part of Lathe's cost to explain the difference."""


@dataclass(frozen=True)
class Value:
    """One number with its unit, so the JSON never leaves a reader guessing."""

    value: float
    unit: str


@dataclass
class Measurement:
    """One variant's result within a comparison."""

    key: str
    """Stable identifier for tooling, e.g. ``lathe_append``."""
    label: str
    """Human-readable, shown in the table."""
    role: Role
    metrics: dict[str, Value]
    details: dict[str, Any] = field(default_factory=dict)
    """Supporting data (per-round numbers, counts, GC pauses) not shown in the table."""

    def metric(self, name: str) -> float:
        return self.metrics[name].value


@dataclass
class Comparison:
    """The same work done by a baseline and by one or more Lathe variants."""

    key: str
    title: str
    headline: str
    """The metric the ``vs baseline`` ratio is computed on."""
    higher_is_better: bool
    columns: list[str]
    """Metrics shown in the table, in order."""
    variants: list[Measurement]
    """The baseline first, then Lathe variants, then diagnostics."""
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Measurement:
        return next(v for v in self.variants if v.role is Role.BASELINE)

    def variant(self, key: str) -> Measurement:
        return next(v for v in self.variants if v.key == key)

    def ratio(self, variant: Measurement) -> float | None:
        """``variant / baseline`` on the headline metric (None without a usable baseline)."""
        base = self.baseline.metrics.get(self.headline)
        value = variant.metrics.get(self.headline)
        if base is None or value is None or base.value == 0:
            return None
        return value.value / base.value


@dataclass(frozen=True)
class Goal:
    """A target from the issue tracker and whether this run met it."""

    description: str
    measured: float
    target: float
    unit: str
    comparator: str
    """``>=``, ``<=`` or ``<``: how ``measured`` must relate to ``target``."""

    @property
    def met(self) -> bool:
        if self.comparator == ">=":
            return self.measured >= self.target
        if self.comparator == "<=":
            return self.measured <= self.target
        if self.comparator == "<":
            return self.measured < self.target
        raise ValueError(f"unknown comparator {self.comparator!r}")


@dataclass
class FamilyResult:
    """Everything one benchmark family measured."""

    name: str
    summary: str
    parameters: dict[str, Any]
    comparisons: list[Comparison]
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    conditions: dict[str, Any] = field(default_factory=dict)
    """How busy the machine was while this family ran (filled in by the runner)."""


@dataclass
class Report:
    """One invocation of ``python -m bench``."""

    started_at: str
    finished_at: str
    command: list[str]
    machine: dict[str, Any]
    infrastructure: dict[str, Any]
    families: list[FamilyResult]
    errors: dict[str, str] = field(default_factory=dict)
    """Families that crashed, with the error; their results are missing."""


def to_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON data, with derived ratios and goal verdicts spelled out."""
    families: dict[str, Any] = {}
    goals: list[dict[str, Any]] = []
    for family in report.families:
        comparisons = []
        for comparison in family.comparisons:
            variants = []
            for variant in comparison.variants:
                data = _plain(variant)
                if variant.role is not Role.BASELINE:
                    data["vs_baseline"] = comparison.ratio(variant)
                variants.append(data)
            comparisons.append({**_plain(comparison), "variants": variants})
        family_goals = [{**_plain(goal), "met": goal.met} for goal in family.goals]
        goals.extend({"family": family.name, **goal} for goal in family_goals)
        families[family.name] = {
            **_plain(family),
            "comparisons": comparisons,
            "goals": family_goals,
        }
        del families[family.name]["name"]
    return {
        "format": "lathe-bench/1",
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "command": report.command,
        "machine": report.machine,
        "infrastructure": report.infrastructure,
        "goals": goals,
        "all_goals_met": all(goal["met"] for goal in goals) and not report.errors,
        "errors": report.errors,
        "families": families,
    }


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, StrEnum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
