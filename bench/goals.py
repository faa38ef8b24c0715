"""Declared figures and goals: what each issue asked a benchmark family to show.

A family declares, next to its code (``Family.goals``), every figure an issue asked
for: where the figure is in the family's results, where its baseline from the same
run is, how the two are compared, and the goal, if the issue set one. The report
(``python -m bench --report``) evaluates these declarations against a run's results
JSON, so a goal is written once, beside the code that measures it, and a figure no
family produces yet shows up as *not measured* with the issue it comes from, instead
of silently missing.

Paths are ``<comparison key>/<variant key>/<metric>`` within the family's results,
e.g. ``online_one/lathe_one/p99``: the keys ``Comparison.key``, ``Measurement.key``
and the metric name of ``bench/results.py``, as they appear in the JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Compare(StrEnum):
    """How a figure is set against its baseline to give the number a goal judges."""

    VALUE = "value"
    """The figure itself (e.g. p99 < 10 ms); the baseline, if any, is shown beside it."""
    RATIO = "ratio"
    """figure / baseline (e.g. Predict p50 <= 1.3 x the sum of its building blocks)."""
    SPEEDUP = "speedup"
    """baseline / figure (e.g. Feast's p99 / Lathe's p99 >= 2)."""
    DIFFERENCE = "difference"
    """figure - baseline (e.g. AUC minus LightGBM's AUC >= -0.01)."""


class Status(StrEnum):
    """A declared figure's outcome in one report."""

    MET = "met"
    MISSED = "missed"
    NOT_MEASURED = "not measured"
    """The family was not run, failed, or does not (yet) produce the figure."""
    REPORTED = "reported"
    """Measured; the issue asked for the number, not for a goal."""


_COMPARATORS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class GoalSpec:
    """One figure an issue asked for, and its goal if it set one."""

    issue: int | None
    """The issue that asked for it; None for a standing goal from before issue 10."""
    description: str
    """What is compared, as a reader of the report wants it, e.g.
    ``"Predict p50 vs raw echo + GetOnlineFeatures + ONNX Runtime p50"``."""
    figure: str
    """``<comparison>/<variant>/<metric>`` of Lathe's number."""
    baseline: tuple[str, ...] = ()
    """Paths of the baseline numbers from the same run; several are summed (a floor made
    of building blocks). Empty only with ``Compare.VALUE``."""
    compare: Compare = Compare.RATIO
    comparator: str | None = None
    """``<``, ``<=``, ``>`` or ``>=``: how the compared number must relate to ``threshold``."""
    threshold: float | None = None
    """The goal; None (with ``comparator`` None) when the issue asked only for the figure."""
    unit: str = ""
    """The threshold's unit for ``VALUE`` and ``DIFFERENCE`` goals (e.g. ``ms``), shown
    even when nothing was measured; ratios and speedups are in ``x``."""
    measured_by: str | None = None
    """The family whose results hold ``figure`` and ``baseline`` when it is not the
    declaring one (e.g. a family that other work is adding): the figure is listed,
    not measured, until that family exists and runs."""

    def __post_init__(self) -> None:
        if (self.comparator is None) != (self.threshold is None):
            raise ValueError(
                f"goal {self.description!r}: give both comparator and threshold, or neither "
                "(a figure reported without a goal)"
            )
        if self.comparator is not None and self.comparator not in _COMPARATORS:
            raise ValueError(
                f"goal {self.description!r}: comparator {self.comparator!r} is not one of "
                f"{', '.join(_COMPARATORS)}"
            )
        if not self.baseline and self.compare is not Compare.VALUE:
            raise ValueError(
                f"goal {self.description!r}: compare={self.compare.value} needs a baseline path"
            )
        for path in (self.figure, *self.baseline):
            if len(path.split("/")) != 3:
                raise ValueError(
                    f"goal {self.description!r}: path {path!r} is not "
                    "<comparison>/<variant>/<metric>"
                )

    @property
    def goal_text(self) -> str:
        """E.g. ``<= 1.3x``; empty when there is no goal."""
        if self.comparator is None or self.threshold is None:
            return ""
        if self.compare in (Compare.RATIO, Compare.SPEEDUP):
            return f"{self.comparator} {self.threshold:,g}x"
        return f"{self.comparator} {self.threshold:,g} {self.unit}".rstrip()


@dataclass(frozen=True)
class Figure:
    """A number read from a results file, with its unit."""

    value: float
    unit: str


@dataclass(frozen=True)
class Verdict:
    """A declared figure evaluated against one family's results."""

    family: str
    spec: GoalSpec
    status: Status
    figure: Figure | None = None
    baseline: Figure | None = None
    """The baseline, summed over its paths."""
    baseline_parts: tuple[Figure, ...] = ()
    compared: float | None = None
    """The number the goal judges (figure, ratio, speedup or difference)."""
    compared_unit: str = ""
    reason: str = ""
    """Why a figure is not measured (family not run, failed, no such variant)."""
    reduced_size: bool = False
    """Measured with parameters other than the family's full-run defaults."""

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "issue": spec.issue,
            "family": self.family,
            "description": spec.description,
            "figure_path": spec.figure,
            "baseline_paths": list(spec.baseline),
            "compare": spec.compare.value,
            "comparator": spec.comparator,
            "threshold": spec.threshold,
            "goal": spec.goal_text,
            "status": self.status.value,
            "figure": _figure_json(self.figure),
            "baseline": _figure_json(self.baseline),
            "baseline_parts": [_figure_json(p) for p in self.baseline_parts],
            "compared": self.compared,
            "compared_unit": self.compared_unit,
            "reason": self.reason,
            "reduced_size": self.reduced_size,
        }


def evaluate(
    family: str,
    spec: GoalSpec,
    result: dict[str, Any] | None,
    *,
    error: str | None = None,
    reduced_size: bool = False,
    registered: bool = True,
) -> Verdict:
    """Judge ``spec`` against ``result``: the entry of ``family`` (the one measuring the
    figure) in a results JSON, or None when it did not run (``error`` when it crashed;
    ``registered`` False when no such family exists in this checkout)."""
    if result is None:
        if error:
            why = f"the family failed: {error}"
        elif registered:
            why = "the family was not run"
        else:
            why = f"no family {family} here yet (other work adds it)"
        return Verdict(family, spec, Status.NOT_MEASURED, reason=why)
    missing: list[str] = []
    figure = _lookup(result, spec.figure, missing)
    parts = tuple(p for p in (_lookup(result, path, missing) for path in spec.baseline) if p)
    if figure is None or missing:
        return Verdict(
            family,
            spec,
            Status.NOT_MEASURED,
            figure=figure,
            baseline_parts=parts,
            reason="; ".join(dict.fromkeys(missing)),
            reduced_size=reduced_size,
        )
    units = {p.unit for p in parts}
    if len(units) > 1:
        return Verdict(
            family,
            spec,
            Status.NOT_MEASURED,
            figure=figure,
            baseline_parts=parts,
            reason=f"baseline in different units ({', '.join(sorted(units))}), not summed",
            reduced_size=reduced_size,
        )
    baseline = Figure(sum(p.value for p in parts), parts[0].unit) if parts else None
    compared, unit = _compare(spec.compare, figure, baseline)
    if spec.comparator is None or spec.threshold is None:
        status = Status.REPORTED
    elif compared is None or not math.isfinite(compared):
        status = Status.NOT_MEASURED
    else:
        ok = _COMPARATORS[spec.comparator](compared, spec.threshold)
        status = Status.MET if ok else Status.MISSED
    return Verdict(
        family,
        spec,
        status,
        figure=figure,
        baseline=baseline,
        baseline_parts=parts,
        compared=compared,
        compared_unit=unit,
        reason="" if compared is not None else "the baseline is zero or missing",
        reduced_size=reduced_size,
    )


def _compare(how: Compare, figure: Figure, baseline: Figure | None) -> tuple[float | None, str]:
    if how is Compare.VALUE or baseline is None:
        return figure.value, figure.unit
    if how is Compare.DIFFERENCE:
        return figure.value - baseline.value, figure.unit
    numerator, denominator = (
        (figure.value, baseline.value) if how is Compare.RATIO else (baseline.value, figure.value)
    )
    if denominator == 0:
        return None, "x"
    return numerator / denominator, "x"


def _lookup(result: dict[str, Any], path: str, missing: list[str]) -> Figure | None:
    """The metric at ``path`` in a family's JSON result; notes what is missing."""
    comparison_key, variant_key, metric = path.split("/")
    comparison = next(
        (c for c in result.get("comparisons", []) if c.get("key") == comparison_key), None
    )
    if comparison is None:
        missing.append(f"no comparison {comparison_key!r}")
        return None
    variant = next((v for v in comparison.get("variants", []) if v.get("key") == variant_key), None)
    if variant is None:
        missing.append(f"no variant {variant_key!r} in {comparison_key!r}")
        return None
    value = variant.get("metrics", {}).get(metric)
    if value is None or value.get("value") is None:
        missing.append(f"no metric {metric!r} in {comparison_key}/{variant_key}")
        return None
    return Figure(float(value["value"]), str(value.get("unit", "")))


def _figure_json(figure: Figure | None) -> dict[str, Any] | None:
    return None if figure is None else {"value": figure.value, "unit": figure.unit}


def format_number(number: float | None, unit: str = "") -> str:
    """A number as the report prints it: 3 significant digits, thousands separated."""
    if number is None or (isinstance(number, float) and not math.isfinite(number)):
        return "n/a"
    magnitude = abs(number)
    if isinstance(number, int) or magnitude >= 1000:
        text = f"{number:,.0f}"
    elif magnitude >= 100:
        text = f"{number:.0f}"
    elif magnitude >= 10:
        text = f"{number:.1f}"
    elif magnitude >= 1 or magnitude == 0:
        text = f"{number:.2f}"
    else:
        text = f"{number:#.3g}"
    return f"{text} {unit}".rstrip() if unit and unit != "x" else f"{text}{unit}"
