"""Writing a benchmark report: ``report.json``, ``report.md`` and ``plots/*.png``.

The directory is ``bench/results/report-<UTC timestamp of the newest run>/`` by
default (ignored by git, next to the results it was built from), and
``bench/results/report-latest`` links to the newest one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.families import Family
from bench.harness import json_safe
from bench.report_data import build_report
from bench.report_markdown import render_markdown
from bench.report_plots import write_plots


@dataclass(frozen=True)
class WrittenReport:
    """Where a report went, and its verdict counts (``met``, ``missed``, ...)."""

    directory: Path
    markdown: Path
    json: Path
    plots: dict[str, Path]
    summary: dict[str, int]


def write_report_files(
    runs: Sequence[tuple[str, dict[str, Any]]],
    families: Sequence[Family],
    results_dir: Path,
    directory: Path | None = None,
) -> WrittenReport:
    """Build the report from ``runs`` and write it; returns where everything went."""
    generated_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = build_report(runs, families, generated_at=generated_at)
    if directory is None:
        newest = max(str(run.get("started_at", "")) for _, run in runs) or generated_at
        stamp = newest.replace(":", "").replace("-", "")
        directory = results_dir / f"report-{stamp}"
    directory.mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, directory / "plots")
    relative = {key: path.relative_to(directory).as_posix() for key, path in plots.items()}
    report["plots"] = relative
    markdown = directory / "report.md"
    markdown.write_text(render_markdown(report, relative))
    data = directory / "report.json"
    data.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    if directory.parent == results_dir:
        _link_latest(results_dir / "report-latest", directory)
    return WrittenReport(directory, markdown, data, plots, report["summary"])


def _link_latest(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if not link.is_symlink():
            return  # something else lives there: leave it alone
        link.unlink()
    link.symlink_to(target.name, target_is_directory=True)
