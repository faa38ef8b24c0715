"""``python -m bench.feast_baseline``: every feature store baseline on one data set.

Run from the repository root with Lathe's environment::

    .venv/bin/python -m bench.feast_baseline            # full size (1M labels), ~15-30 min
    .venv/bin/python -m bench.feast_baseline --quick    # small sizes, a minute or two
    .venv/bin/python -m bench.feast_baseline --skip-feast

Steps: write (or reuse) the Parquet data set (``data.py``); the DuckDB ASOF
baselines in this process (``bench/duckdb_asof.py``); the Feast baselines in
Feast's environment (``run_feast.py``, needs ``setup.sh`` first); and a check of
Feast's training set against DuckDB's bitemporal join on the first
``--verify-labels`` labels. Prints a summary on stderr and the whole result as
JSON on stdout, also written to ``bench/results/feast_baseline-<UTC stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.feast_baseline import data
from bench.feast_baseline.runner import (
    REPO_ROOT,
    FeastUnavailable,
    compare_historical,
    feast_historical,
    run_feast,
)

QUICK_SPEC = {"entities": 5_000, "labels": 50_000}
QUICK_FEAST = [
    "--requests",
    "500",
    "--http-warmup",
    "50",
    "--batch-requests",
    "200",
    "--warmup",
    "20",
]


def _log(message: str) -> None:
    print(f"[feast_baseline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _default_data_dir(spec: data.DataSpec) -> Path:
    name = f"seed{spec.seed}-e{spec.entities}-r{spec.rows_per_entity}-l{spec.labels}"
    return Path(tempfile.gettempdir()) / "lathe-features-bench" / name


def _summary(result: dict[str, Any]) -> list[str]:
    lines = []
    duck = result.get("duckdb")
    if duck:
        lines.append(
            f"DuckDB {duck['duckdb_version']} ({duck['threads']} threads), "
            f"{duck['label_rows']:,} labels x {duck['views']} views:"
        )
        lines.append(f"  ASOF (event_time only)      {duck['asof_simple']['best_s']:.3f} s")
        for method, timing in duck["bitemporal"].items():
            lines.append(f"  bitemporal, {method:<16} {timing['best_s']:.3f} s")
        pre = duck["bitemporal_precomputed_timelines"]
        lines.append(
            f"  bitemporal, stored timelines {pre['best_s']:.3f} s "
            f"(+{pre['build_timelines_s']:.3f} s to build them)"
        )
    feast = result.get("feast")
    if feast:
        lines.append(f"Feast {feast['feast_version']}:")
        for key, title in [
            ("http_single", "HTTP, 1 entity x 20"),
            ("http_batch", "HTTP, 100 entities x 20"),
            ("inprocess_batch", "in process, 100 x 20"),
            ("inprocess_batch_to_dict", "in process, 100 x 20 + to_dict"),
            ("inprocess_single", "in process, 1 x 20"),
        ]:
            if key in feast:
                ms = feast[key]["latency_ms"]
                lines.append(f"  {title:<32} p50 {ms['p50']:.3f} ms  p99 {ms['p99']:.3f} ms")
        for entry in feast.get("historical", []):
            mode = "filter_by_created" if entry["filter_by_created_timestamp"] else "default"
            if "retrieve_s" in entry:
                outcome = (
                    f"{entry['retrieve_s']:.2f} s, {entry['rows']:,} rows, "
                    f"{entry['max_rss_mib']:,} MiB"
                )
            else:
                outcome = entry.get("error") or entry.get("skipped", "")
            lines.append(f"  historical {mode:<17} {entry['labels']:>9,} labels: {outcome}")
    check = result.get("feast_vs_bitemporal")
    if check:
        for mode, c in check.items():
            lines.append(
                f"  {mode}: {c['feast_rows']:,} of {c['labels']:,} label rows returned, "
                f"{c['rows_differing_from_bitemporal']:,} differ from the bitemporal answer"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feast_baseline", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="data directory (reused)")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--entities", type=int, default=None)
    parser.add_argument("--labels", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="DuckDB: best of N")
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--skip-feast", action="store_true")
    parser.add_argument("--verify-labels", type=int, default=20_000)
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep Feast's repository, log and dumps"
    )
    parser.add_argument(
        "--feast-arg",
        action="append",
        default=[],
        help="passed to run_feast.py (repeat; e.g. --feast-arg=--historical-labels=100000)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results)")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="PCT",
        help="start each phase when the machine is <= PCT%% busy (gives up after 5 min)",
    )
    args = parser.parse_args(argv)

    overrides: dict[str, int] = dict(QUICK_SPEC) if args.quick else {}
    if args.entities is not None:
        overrides["entities"] = args.entities
    if args.labels is not None:
        overrides["labels"] = args.labels
    spec = data.DataSpec(**overrides)
    data_dir = args.data or _default_data_dir(spec)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    result: dict[str, Any] = {
        "format": "lathe-feast-baseline/1",
        "started_at": started_at,
        "command": sys.argv,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "data_dir": str(data_dir),
    }
    began = time.perf_counter()
    manifest = data.write_dataset(spec, data_dir)
    result["data"] = {"spec": manifest["spec"], "rows": manifest["rows"]}
    result["data_s"] = round(time.perf_counter() - began, 2)
    _log(f"data in {data_dir}: {manifest['rows']}")

    waited: dict[str, float] = {}

    def quiet(phase: str) -> None:
        if args.wait_quiet is not None:
            from bench.harness import wait_for_quiet

            waited[phase] = round(
                asyncio.run(wait_for_quiet(max_busy_pct=args.wait_quiet, timeout_s=300)), 1
            )

    if not args.skip_duckdb:
        from bench.duckdb_asof import run_baseline

        quiet("duckdb")
        _log("DuckDB baselines")
        result["duckdb"] = run_baseline(data_dir, repeats=args.repeats)

    if not args.skip_feast:
        workdir = Path(tempfile.mkdtemp(prefix="feast-bench-"))
        log = workdir / "run_feast.log"  # removed with workdir unless --keep-workdir
        feast_args = [*(QUICK_FEAST if args.quick else []), *args.feast_arg]
        feast_args += ["--workdir", str(workdir)]
        quiet("feast")
        _log(f"Feast baselines (log: {log})")
        try:
            result["feast"] = run_feast(data_dir, feast_args, log=log)
        except (FeastUnavailable, RuntimeError, subprocess.TimeoutExpired) as error:
            result["feast_error"] = str(error)
            args.keep_workdir = True
            _log(f"Feast baselines failed: {error}")
        if "feast" in result and args.verify_labels > 0:
            labels = min(args.verify_labels, manifest["rows"]["labels"])
            checks: dict[str, Any] = {}
            for mode, filter_by_created in [
                ("feast_default", False),
                ("feast_filter_by_created_timestamp", True),
            ]:
                dump = workdir / f"historical-{mode}.parquet"
                _log(f"checking Feast's training set ({mode}) on {labels:,} labels")
                feast_historical(
                    data_dir,
                    workdir / "feature_repo",
                    labels,
                    dump,
                    filter_by_created=filter_by_created,
                    log=log,
                )
                checks[mode] = compare_historical(data_dir, dump, labels)
            result["feast_vs_bitemporal"] = checks
        if args.keep_workdir:
            result["feast_workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["waited_for_quiet_s"] = waited
    result["wall_s"] = round(time.perf_counter() - began, 1)
    out = args.out or (
        REPO_ROOT
        / "bench"
        / "results"
        / f"feast_baseline-{started_at.replace(':', '').replace('-', '')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    out.write_text(text)
    for line in _summary(result):
        print(line, file=sys.stderr)
    _log(f"written to {out}")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
