"""``python -m bench [FAMILY ...]``: run benchmarks, print a table, write JSON.

Examples::

    python -m bench                       # everything (also: make bench)
    python -m bench eventstore            # every eventstore.* family
    python -m bench eventstore.lag --set eventstore.lag.rate=500
    python -m bench --quick               # a fast smoke run of the harness
    python -m bench --list
    python -m bench --report --quick      # run, then one report (also: make bench-report)
    python -m bench --from bench/results  # a report of runs already finished

Results go to ``bench/results/<UTC timestamp>.json`` and ``bench/results/latest.json``;
a report (``--report`` / ``--from``) to ``bench/results/report-<timestamp>/``
(``report.md``, ``report.json``, ``plots/*.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.families import Family, all_families, select
from bench.harness import (
    RESULTS_DIR,
    busy_percent,
    cpu_ticks,
    isolated_run,
    provide_servers,
    wait_for_quiet,
    write_report,
)
from bench.machine import machine_info, server_info
from bench.report import render
from bench.report_data import load_results
from bench.report_files import WrittenReport, write_report_files
from bench.results import FamilyResult, Report

_log = logging.getLogger("bench")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Lathe benchmarks: each Lathe number side by side with its raw baseline.",
    )
    parser.add_argument(
        "families",
        nargs="*",
        metavar="FAMILY",
        help="families (e.g. eventstore.append) or areas (e.g. eventstore); default: all",
    )
    parser.add_argument("--list", action="store_true", help="list families and parameters")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FAMILY.PARAM=VALUE",
        help="override a parameter, e.g. eventstore.lag.duration_s=30 (repeatable)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--report",
        action="store_true",
        help="after the run, write one report: every declared figure next to its baseline "
        "and each issue's goal met/missed, as Markdown + JSON + PNG plots",
    )
    parser.add_argument(
        "--from",
        dest="from_path",
        type=Path,
        default=None,
        metavar="PATH",
        help="run nothing: write the report from results JSON already written (a file, or "
        "a directory such as bench/results, each family taken from its newest run)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the report goes (default: <results-dir>/report-<UTC timestamp>)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="PCT",
        help="before each family, wait (up to 10 minutes) until the whole machine has been "
        "at most PCT%% busy for 3 seconds; for shared machines",
    )
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="install OpenTelemetry as ServiceHost does (spans to JSON-lines files in a "
        "temporary directory, asyncpg instrumented) to include tracing's cost",
    )
    return parser


def _overrides(items: Sequence[str], families: Sequence[Family]) -> dict[str, dict[str, str]]:
    """``family.param=value`` strings grouped by family name."""
    names = {f.name for f in families}
    grouped: dict[str, dict[str, str]] = {name: {} for name in names}
    for item in items:
        target, sep, value = item.partition("=")
        family, _, param = target.rpartition(".")
        if not sep or family not in names:
            raise ValueError(
                f"--set {item!r}: expected FAMILY.PARAM=VALUE with FAMILY one of the "
                f"selected families ({', '.join(sorted(names))})"
            )
        grouped[family][param] = value
    return grouped


def _list() -> None:
    for family in all_families():
        print(f"{family.name}: {family.summary}")
        for name, value in vars(family.params()).items():
            print(f"    {name} = {value!r}")


async def _run(
    families: list[Family], params: dict[str, Any], command: list[str], wait_quiet: float | None
) -> Report:
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    machine = machine_info()
    results: list[FamilyResult] = []
    errors: dict[str, str] = {}
    with provide_servers() as servers:
        async with isolated_run(servers) as context:
            infrastructure = await server_info(servers, context)
            for family in families:
                waited = None
                if wait_quiet is not None:
                    print(f"waiting for <= {wait_quiet:g}% CPU ...", file=sys.stderr, flush=True)
                    waited = await wait_for_quiet(max_busy_pct=wait_quiet)
                print(f"running {family.name} ...", file=sys.stderr, flush=True)
                started, ticks = time.perf_counter(), cpu_ticks()
                try:
                    result = await family.run(context, params[family.name])
                except Exception as exc:
                    _log.exception("benchmark family %s failed", family.name)
                    errors[family.name] = f"{type(exc).__name__}: {exc}"
                    continue
                result.wall_s = time.perf_counter() - started
                result.conditions = {
                    "machine_cpu_busy_pct": round(busy_percent(ticks, cpu_ticks()), 1),
                    "load_average_after": list(os.getloadavg()),
                    "waited_for_quiet_s": waited,
                }
                results.append(result)
    machine["load_average_end"] = list(os.getloadavg())
    return Report(
        started_at=started_at,
        finished_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        command=command,
        machine=machine,
        infrastructure=infrastructure,
        families=results,
        errors=errors,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    if args.from_path is not None:
        return _report_from(args)
    try:
        families = select(args.families)
        overrides = _overrides(args.set, families)
        params = {
            f.name: f.make_params(quick=args.quick, overrides=overrides[f.name]) for f in families
        }
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    telemetry = None
    if args.telemetry:
        from libs.telemetry import configure_telemetry

        traces = Path(tempfile.mkdtemp(prefix="lathe-bench-traces-"))
        telemetry = configure_telemetry("bench", traces_dir=traces)
    command = ["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)]
    try:
        report = asyncio.run(_run(families, params, command, args.wait_quiet))
    finally:
        if telemetry is not None:
            telemetry.shutdown()
    if telemetry is not None:
        report.machine["telemetry"] = f"OpenTelemetry as ServiceHost, spans in {traces}"
        print(f"spans written under {traces}", file=sys.stderr)
    print(render(report))
    stamped, latest = write_report(report, args.results_dir)
    print(f"\nwrote {stamped} and {latest.name}", file=sys.stderr)
    if args.report:
        runs = [(stamped.name, json.loads(stamped.read_text()))]
        _announce(write_report_files(runs, all_families(), args.results_dir, args.report_dir))
    return 1 if report.errors else 0


def _report_from(args: argparse.Namespace) -> int:
    """``--from``: a report of results already written; nothing runs."""
    if args.families or args.quick or args.set or args.wait_quiet is not None:
        print(
            "error: --from writes a report of finished runs; FAMILY, --quick, --set and "
            "--wait-quiet apply to a run (use --report to run and report)",
            file=sys.stderr,
        )
        return 2
    try:
        runs = load_results(args.from_path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _announce(write_report_files(runs, all_families(), args.results_dir, args.report_dir))
    return 0


def _announce(written: WrittenReport) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in written.summary.items())
    print(
        f"report: {written.markdown} (+ report.json, {len(written.plots)} plots); goals: {counts}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
