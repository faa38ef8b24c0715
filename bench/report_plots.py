"""PNG plots of a benchmark report, for what a reader would rather look at than read.

- per comparison with latencies: p50 / p90 / p99 of every variant, the baseline's
  bars marked, so Lathe's tail reads against the raw building block's at a glance;
  other comparisons (throughput, seconds, AUC): their headline metric per variant;
- per comparison whose samples were kept as histograms (``latency_histogram`` in a
  variant's details): each variant's distribution, log-scaled, overlaid;
- one overview of the judged goals: how far each measured value is from its target.

Drawn with matplotlib's Agg renderer through ``matplotlib.figure.Figure`` (no pyplot,
so no global figure state and no display needed), from the report's JSON data only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

_PERCENTILES = ("p50", "p90", "p95", "p99")
_COLOURS = {"p50": "#4c72b0", "p90": "#dd8452", "p95": "#937860", "p99": "#c44e52"}
_ROLE_COLOURS = {"baseline": "#7f7f7f", "lathe": "#4c72b0", "diagnostic": "#c6d4e8"}
_MAX_HISTOGRAMS = 6
_MIN_HISTOGRAM_SAMPLES = 50
"""Fewer calls (e.g. each chunk's first call at small sizes) draw spikes, not a shape."""


def write_plots(report: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Write the report's plots under ``directory``; returns plot key -> file.

    Keys: ``goals``, ``<family>/<comparison>`` (percentiles) and
    ``<family>/<comparison>/histogram``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.png"):  # a report rewritten must not keep old plots
        stale.unlink()
    written: dict[str, Path] = {}
    goals = [g for g in report.get("goals", []) if _goal_score(g) is not None]
    if goals:
        written["goals"] = _save(_goals_figure(goals), directory / "goals.png")
    for family, result in report.get("families", {}).items():
        for comparison in result.get("comparisons", []):
            key = f"{family}/{comparison['key']}"
            stem = _file_stem(f"{family}-{comparison['key']}")
            percentiles, latencies = _latency_variants(comparison)
            headline = _headline_variants(comparison)
            if latencies:
                figure = _percentiles_figure(comparison, percentiles, latencies)
                written[key] = _save(figure, directory / f"{stem}.png")
            elif len(headline) > 1:
                figure = _headline_figure(comparison, headline)
                written[key] = _save(figure, directory / f"{stem}.png")
            histograms = _histogram_variants(comparison)
            if histograms:
                figure = _histogram_figure(comparison, histograms)
                written[f"{key}/histogram"] = _save(figure, directory / f"{stem}-histogram.png")
    return written


def _latency_variants(
    comparison: dict[str, Any],
) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The percentiles the comparison shows (at least two of p50/p90/p95/p99, in ms) and
    the variants that have all of them; no variants where it shows fewer."""
    shown = tuple(p for p in _PERCENTILES if p in comparison.get("columns", []))
    variants = [
        v
        for v in comparison.get("variants", [])
        if all(
            (v["metrics"].get(p) or {}).get("unit") == "ms"
            and isinstance((v["metrics"].get(p) or {}).get("value"), int | float)
            for p in shown
        )
    ]
    return (shown, variants) if len(shown) >= 2 else (shown, [])


def _headline_variants(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """Variants with a finite value of the comparison's headline metric."""
    name = comparison.get("headline")
    return [
        v
        for v in comparison.get("variants", [])
        if isinstance((v["metrics"].get(name) or {}).get("value"), int | float)
    ]


def _histogram_variants(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    found = [
        v
        for v in comparison.get("variants", [])
        if sum((v.get("details") or {}).get("latency_histogram", {}).get("counts", []))
        >= _MIN_HISTOGRAM_SAMPLES
    ]
    lathe_first = sorted(found, key=lambda v: {"baseline": 0, "lathe": 1}.get(v["role"], 2))
    return lathe_first[:_MAX_HISTOGRAMS]


def _percentiles_figure(
    comparison: dict[str, Any], percentiles: Sequence[str], variants: Sequence[dict[str, Any]]
) -> Any:
    figure = _new_figure(width=8.0, height=1.0 + 0.55 * len(variants))
    axes = figure.add_subplot()
    bar = 0.8 / len(percentiles)
    positions = range(len(variants))
    values = [v["metrics"][p]["value"] for v in variants for p in percentiles]
    for i, name in enumerate(percentiles):
        axes.barh(
            [y + (i - (len(percentiles) - 1) / 2) * bar for y in positions],
            [v["metrics"][name]["value"] for v in variants],
            height=bar,
            color=_COLOURS[name],
            label=name,
        )
    axes.set_yticks(list(positions))
    axes.set_yticklabels([_short(v) for v in variants], fontsize=8)
    for tick, variant in zip(axes.get_yticklabels(), variants, strict=True):
        if variant["role"] == "baseline":
            tick.set_fontweight("bold")
    axes.invert_yaxis()
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 30:
        _log_x(axes)
    axes.set_xlabel("latency (ms); baseline in bold")
    axes.set_title(_wrap(comparison["title"]), fontsize=9)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes.grid(axis="x", alpha=0.3)
    return figure


def _headline_figure(comparison: dict[str, Any], variants: Sequence[dict[str, Any]]) -> Any:
    name = comparison["headline"]
    figure = _new_figure(width=8.0, height=1.0 + 0.4 * len(variants))
    axes = figure.add_subplot()
    values = [v["metrics"][name]["value"] for v in variants]
    colours = [_ROLE_COLOURS.get(v["role"], "#8c8c8c") for v in variants]
    axes.barh(range(len(variants)), values, color=colours)
    axes.set_yticks(list(range(len(variants))))
    axes.set_yticklabels([_short(v) for v in variants], fontsize=8)
    axes.invert_yaxis()
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 30:
        _log_x(axes)
    unit = variants[0]["metrics"][name].get("unit", "")
    better = "higher" if comparison.get("higher_is_better") else "lower"
    axes.set_xlabel(f"{name} ({unit}); {better} is better; grey baseline, blue Lathe")
    axes.set_title(_wrap(comparison["title"]), fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    return figure


def _histogram_figure(comparison: dict[str, Any], variants: Sequence[dict[str, Any]]) -> Any:
    figure = _new_figure(width=8.0, height=4.0)
    axes = figure.add_subplot()
    for variant in variants:
        histogram = variant["details"]["latency_histogram"]
        edges, counts = histogram["edges_ms"], histogram["counts"]
        total = sum(counts) or 1
        # Each variant has its own log-spaced buckets: per decade, shares compare.
        decades = [math.log10(hi / lo) if lo > 0 and hi > lo else 1.0 for lo, hi in pairwise(edges)]
        style = "-" if variant["role"] != "diagnostic" else ":"
        width = 2.0 if variant["role"] == "baseline" else 1.3
        axes.stairs(
            [c / total / d for c, d in zip(counts, decades, strict=True)],
            edges,
            label=_short(variant),
            linestyle=style,
            linewidth=width,
        )
    _log_x(axes)
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("share of calls per decade of latency")
    axes.set_title(_wrap(comparison["title"]), fontsize=9)
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return figure


def _goal_score(goal: dict[str, Any]) -> float | None:
    """How the measured value stands against the target: > 1 met with that margin,
    < 1 missed by it. None where it cannot be drawn this way (no goal, a difference,
    values of mixed sign)."""
    if goal["status"] not in ("met", "missed") or goal["compare"] == "difference":
        return None
    measured, target = goal["compared"], goal["threshold"]
    if measured is None or target is None or measured <= 0 or target <= 0:
        return None
    return measured / target if goal["comparator"] in (">", ">=") else target / measured


def _goals_figure(goals: Sequence[dict[str, Any]]) -> Any:
    figure = _new_figure(width=8.0, height=1.2 + 0.32 * len(goals))
    axes = figure.add_subplot()
    scores = [_goal_score(g) or 1.0 for g in goals]
    colours = ["#55a868" if g["status"] == "met" else "#c44e52" for g in goals]
    labels = [
        f"#{g['issue'] if g['issue'] is not None else '-'} {_clip(g['description'], 56)}"
        for g in goals
    ]
    axes.barh(range(len(goals)), [s - 1.0 for s in scores], left=1.0, color=colours)
    axes.axvline(1.0, color="black", linewidth=1)
    _log_x(axes)
    low, high = min(0.5, *scores) / 1.2, max(2.0, *scores) * 1.2
    axes.set_xlim(low, high)
    steps = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
    axes.set_xticks([t for t in steps if low <= t <= high])
    axes.set_yticks(list(range(len(goals))))
    axes.set_yticklabels(labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("margin to the target (x): > 1 met, < 1 missed")
    axes.set_title("Goals: measured against target (green met, red missed)", fontsize=9)
    axes.grid(axis="x", alpha=0.3)
    return figure


def _log_x(axes: Any) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())


def _new_figure(*, width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, min(height, 30.0)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def _short(variant: dict[str, Any]) -> str:
    return _clip(str(variant.get("label") or variant["key"]), 48)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrap(text: str, width: int = 90) -> str:
    return _clip(text, width)


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
