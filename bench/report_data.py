"""One benchmark report from one or more runs' results: every declared figure judged.

``python -m bench --report`` runs the families and builds the report from that run;
``--from <dir or file>`` builds it from results JSON already written
(``bench/results/*.json``), taking each family from the newest run that has it, so
families run one at a time still make one report. Each figure is read next to its
baseline from the same run (a family's comparisons always hold both); the goals come
from the families' declarations (``Family.goals``, ``bench/goals.py``), so a declared
figure no run produced is listed as not measured rather than left out.

Pure data in, plain JSON data out; the Markdown and the plots are drawn from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.families import Family
from bench.goals import Status, Verdict, evaluate

RESULTS_FORMAT = "lathe-bench/1"
REPORT_FORMAT = "lathe-bench-report/1"


def load_results(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The runs in ``path`` (a results JSON file, or a directory of them) as
    ``(file name, results)``; ``latest.json`` is skipped where it repeats a stamped file."""
    if path.is_file():
        return [(path.name, _read(path))]
    if not path.is_dir():
        raise ValueError(f"--from {path}: no such file or directory of bench results")
    runs: list[tuple[str, dict[str, Any]]] = []
    seen: set[tuple[str, str]] = set()
    files = sorted(path.glob("*.json"), key=lambda p: (p.name == "latest.json", p.name))
    for file in files:
        data = _read(file, strict=False)
        if data is None:
            continue
        identity = (str(data.get("started_at")), json.dumps(data.get("command")))
        if identity in seen:
            continue
        seen.add(identity)
        runs.append((file.name, data))
    if not runs:
        raise ValueError(
            f"--from {path}: no bench results ({RESULTS_FORMAT} JSON) there; run "
            "`python -m bench` first or point at a results file"
        )
    return runs


def _read(path: Path, *, strict: bool = True) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if strict:
            raise ValueError(f"{path}: not readable as JSON ({exc})") from exc
        return None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        if strict:
            raise ValueError(f"{path}: not a bench results file (format {RESULTS_FORMAT})")
        return None
    return data


def build_report(
    runs: Sequence[tuple[str, dict[str, Any]]],
    families: Sequence[Family],
    *,
    generated_at: str,
) -> dict[str, Any]:
    """The report: each family's newest result, and every declared figure judged."""
    if not runs:
        raise ValueError("a report needs at least one run's results")
    ordered = sorted(runs, key=lambda run: str(run[1].get("started_at", "")))
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    origin: dict[str, str] = {}
    for source, run in ordered:  # later runs replace earlier ones, family by family
        for name, result in run.get("families", {}).items():
            results[name], origin[name] = result, source
            errors.pop(name, None)
        for name, error in run.get("errors", {}).items():
            errors[name], origin[name] = error, source
            results.pop(name, None)
    by_name = {family.name: family for family in families}
    full_size = {name: _full_size(by_name.get(name), result) for name, result in results.items()}
    verdicts = [
        evaluate(
            name,
            spec,
            results.get(name),
            error=errors.get(name),
            reduced_size=not full_size.get(name, True),
            registered=name in by_name,
        )
        for family in families
        for spec in family.goals
        for name in [spec.measured_by or family.name]
    ]
    verdicts.sort(key=_issue_order)
    newest = ordered[-1][1]
    return {
        "format": REPORT_FORMAT,
        "generated_at": generated_at,
        "sources": [_source(name, run, origin) for name, run in ordered if name in origin.values()],
        "machine": newest.get("machine", {}),
        "infrastructure": newest.get("infrastructure", {}),
        "summary": _summary(verdicts),
        "goals": [v.to_json() for v in verdicts],
        "families": {
            name: {
                **result,
                "source": origin[name],
                "full_size": full_size[name],
            }
            for name, result in _in_family_order(results, families)
        },
        "errors": errors,
    }


def _issue_order(verdict: Verdict) -> tuple[int, int]:
    issue = verdict.spec.issue
    return (1, 0) if issue is None else (0, issue)


def _in_family_order(
    results: dict[str, dict[str, Any]], families: Sequence[Family]
) -> list[tuple[str, dict[str, Any]]]:
    order = {family.name: i for i, family in enumerate(families)}
    return sorted(results.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def _full_size(family: Family | None, result: dict[str, Any]) -> bool:
    """Whether a result was measured with the family's full-run (default) parameters."""
    if family is None:
        return True
    defaults = json.loads(json.dumps(asdict(family.params())))
    used = result.get("parameters", {})
    return all(used.get(name, value) == value for name, value in defaults.items())


def _summary(verdicts: Sequence[Verdict]) -> dict[str, int]:
    counts = {status.value: 0 for status in Status}
    for verdict in verdicts:
        counts[verdict.status.value] += 1
    return counts


def _source(name: str, run: dict[str, Any], origin: dict[str, str]) -> dict[str, Any]:
    return {
        "file": name,
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "command": run.get("command"),
        "families": sorted(family for family, source in origin.items() if source == name),
    }
