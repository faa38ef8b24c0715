"""Feast on the benchmark's data: the baseline for GetOnlineFeatures and GetHistoricalFeatures.

Runs inside Feast's own environment (``bench/feast_baseline/.venv``, made by
``setup.sh``), never Lathe's, from the repository root::

    bench/feast_baseline/.venv/bin/python -m bench.feast_baseline.run_feast DATA_DIR [options]

DATA_DIR holds the Parquet files written by ``bench/feast_baseline/data.py``. The
run builds a Feast repository in a temporary directory, laid out as ``feast init``'s
local template lays it out (provider ``local``: a file offline store, which Feast
runs on dask, over the Parquet files, and the SQLite online store), runs
``feast apply`` and ``materialize`` over the whole time range, then measures:

* ``http_single``: ``feast serve`` (its HTTP feature server) on a free port, one
  POST /get-online-features per request for 1 entity x 20 features, sequential
  requests over one keep-alive connection, the JSON body parsed by the client;
* ``inprocess_batch``: ``FeatureStore.get_online_features`` in this process for
  100 entities x 20 features (the call; ``inprocess_batch_to_dict`` adds
  ``.to_dict()``);
* diagnostics: 100 entities over HTTP, 1 entity in process;
* ``historical``: ``get_historical_features(labels, 20 features).to_df()`` for
  growing label counts, each in a child process (peak memory, a time limit),
  until the requested count or the time budget is reached; by default with
  Feast's default semantics and with ``filter_by_created_timestamp=True``.

With ``--serve`` it only builds the repository and runs ``feast serve``, announcing
its port as a JSON line on stdout, until stdin closes: ``bench.features_serving``
calls it side by side with Lathe's service that way.

It prints one JSON object on stdout (progress goes to stderr). Latency stats use
the same fields as ``bench.harness.LatencyStats`` (milliseconds).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.feast_baseline import data
from bench.feast_baseline.http_client import HttpClient

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT = "lathe_bench"

SEMANTICS = {
    "feast_default": (
        "get_historical_features (file/dask offline store, Feast 0.67 default): for a label at "
        "t, rows with t - ttl <= event_timestamp <= t; the latest event_timestamp wins and "
        "created_timestamp only breaks ties. A row written (created) after t still counts, so "
        "a late correction or late arrival leaks into earlier labels: NOT bitemporal."
    ),
    "feast_filter_by_created_timestamp": (
        "get_historical_features(..., filter_by_created_timestamp=True) (new in recent Feast, "
        "opt-in): additionally drops rows with created_timestamp > t, which matches the "
        "bitemporal rule of bench/duckdb_asof.py's bitemporal_pit_join."
    ),
    "online": (
        "materialize(start, end) copies, per entity and view, the row with the latest "
        "event_timestamp (ties: latest created_timestamp) into SQLite; get_online_features "
        "returns it as stored (the SQLite store applies no TTL at read time)."
    ),
    "timing": (
        "Historical: Feast's file offline store reads the Parquet files inside the timed call "
        "(it has no in-memory mode); the entity dataframe is built beforehand and not timed."
    ),
}


def log(message: str) -> None:
    print(f"[run_feast {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- statistics (the same definitions as bench.harness, which needs Lathe's environment) ---


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def latency_stats(samples_ns: Sequence[int]) -> dict[str, float]:
    values = sorted(ns / 1e6 for ns in samples_ns)
    if not values:
        return {"count": 0}
    stats = {
        "count": len(values),
        "mean": sum(values) / len(values),
        "min": values[0],
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "p999": percentile(values, 99.9),
        "max": values[-1],
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}


def measure(
    call: Callable[[int], object], *, requests: int, warmup: int, keep_samples: bool
) -> dict[str, Any]:
    for i in range(warmup):
        call(i)
    samples: list[int] = []
    for i in range(requests):
        started = time.perf_counter_ns()
        call(warmup + i)
        samples.append(time.perf_counter_ns() - started)
    result: dict[str, Any] = {"latency_ms": latency_stats(samples), "requests": requests}
    result["warmup"] = warmup
    if keep_samples:
        result["samples_ns"] = samples
    return result


def max_rss_mib() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not inherited across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# --- the Feast repository ----------------------------------------------------------------

_FEAST_TYPES = {"float64": "Float64", "int64": "Int64"}


def write_repo(repo: Path, data_dir: Path, ttl: timedelta) -> None:
    """A feature repository as ``feast init`` (local template) lays one out."""
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: {PROJECT}
            registry: data/registry.db
            provider: local
            online_store:
                type: sqlite
                path: data/online_store.db
            offline_store:
                type: file
            entity_key_serialization_version: 3
            auth:
                type: no_auth
            """
        )
    )
    files = data.table_files(data_dir)
    lines = [
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureView, Field, FileSource",
        "from feast.types import Float64, Int64",
        "from feast.value_type import ValueType",
        "",
        f'loan = Entity(name="loan", join_keys=["{data.ENTITY_KEY}"], value_type=ValueType.STRING)',
    ]
    for view, features in data.VIEWS.items():
        fields = ", ".join(f'Field(name="{n}", dtype={_FEAST_TYPES[t]})' for n, t in features)
        lines += [
            "",
            f"{view}_source = FileSource(",
            f'    name="{view}_source",',
            f'    path="{files[view].resolve()}",',
            f'    timestamp_field="{data.EVENT_TIME}",',
            f'    created_timestamp_column="{data.CREATED_TIME}",',
            ")",
            f"{view} = FeatureView(",
            f'    name="{view}",',
            "    entities=[loan],",
            f"    ttl=timedelta(seconds={int(ttl.total_seconds())}),",
            f"    schema=[{fields}],",
            "    online=True,",
            f"    source={view}_source,",
            ")",
        ]
    (repo / "features.py").write_text("\n".join(lines) + "\n")


def feast_cli() -> str:
    return str(Path(sys.executable).parent / "feast")


def run_cli(repo: Path, *args: str, timeout: float) -> float:
    started = time.perf_counter()
    subprocess.run(
        [feast_cli(), "-c", str(repo), *args],
        check=True,
        timeout=timeout,
        stdout=sys.stderr,
        stderr=sys.stderr,
    )
    return round(time.perf_counter() - started, 3)


# --- the HTTP feature server -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FeatureServer:
    """``feast serve`` in its own process group, stopped (only it) on exit."""

    def __init__(self, repo: Path, log_path: Path, *, workers: int) -> None:
        self.port = free_port()
        self.args = [
            feast_cli(),
            "-c",
            str(repo),
            "serve",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-w",
            str(workers),
            "--no-access-log",
            # gunicorn recycles a worker every 1,000 requests by default; a restart mid-run
            # would put worker start-up into the tail. Feast at its best: no recycling.
            "--max-requests",
            "0",
        ]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FeatureServer:
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                self.args, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"feast serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("feast serve did not become healthy in 180 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # gunicorn's master stops its workers on SIGTERM
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)  # the group this run created for it
            self.process.wait()


# --- historical retrieval (one child process per size) -----------------------------------


def historical_child(args: argparse.Namespace) -> dict[str, Any]:
    """``--historical-only N``: one get_historical_features call (printed as JSON)."""
    from feast import FeatureStore

    started = time.perf_counter()
    labels = pq.read_table(data.table_files(args.data)["labels"]).slice(0, args.historical_only)
    entity_df = labels.to_pandas().rename(columns={data.EVENT_TIME: "event_timestamp"})
    store = FeatureStore(repo_path=str(args.repo))
    prepare_s = time.perf_counter() - started
    kwargs = {"filter_by_created_timestamp": True} if args.filter_by_created else {}
    started = time.perf_counter()
    job = store.get_historical_features(entity_df=entity_df, features=data.feature_refs(), **kwargs)
    result = job.to_df()
    retrieve_s = time.perf_counter() - started
    if args.dump:
        result.to_parquet(args.dump, index=False)
    return {
        "labels": len(entity_df),
        "rows": len(result),
        "columns": len(result.columns),
        "filter_by_created_timestamp": bool(args.filter_by_created),
        "retrieve_s": round(retrieve_s, 3),
        "prepare_s": round(prepare_s, 3),
        "max_rss_mib": max_rss_mib(),
    }


def _rss_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def run_historical(
    repo: Path,
    data_dir: Path,
    labels: int,
    *,
    filter_by_created: bool,
    timeout_s: float,
    memory_limit_mib: int,
    dump: Path | None = None,
) -> dict[str, Any]:
    """One retrieval in a child process, killed past ``timeout_s`` or ``memory_limit_mib``."""
    command = [
        sys.executable,
        "-m",
        "bench.feast_baseline.run_feast",
        str(data_dir),
        "--historical-only",
        str(labels),
        "--repo",
        str(repo),
    ]
    command += ["--filter-by-created"] if filter_by_created else []
    command += ["--dump", str(dump)] if dump else []
    started = time.perf_counter()
    peak = 0
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=sys.stderr)
        outcome = None
        while child.poll() is None:
            peak = max(peak, _rss_mib(child.pid))
            elapsed = time.perf_counter() - started
            if elapsed > timeout_s:
                outcome = f"killed after {timeout_s:.0f} s (time limit)"
            elif peak > memory_limit_mib:
                outcome = f"killed at {peak} MiB RSS (memory limit {memory_limit_mib} MiB)"
            if outcome:
                child.kill()
                child.wait()
                break
            time.sleep(0.2)
        wall_s = round(time.perf_counter() - started, 3)
        out.seek(0)
        text = out.read().decode()
    base = {"labels": labels, "filter_by_created_timestamp": filter_by_created, "wall_s": wall_s}
    if outcome or child.returncode != 0:
        return {**base, "error": outcome or f"exit status {child.returncode}", "peak_rss_mib": peak}
    return {**base, **json.loads(text.strip().splitlines()[-1])}


# --- the whole run -----------------------------------------------------------------------


def _sizes(target: int, smallest: int = 10_000) -> list[int]:
    sizes, size = [], min(smallest, target)
    while size < target:
        sizes.append(size)
        size *= 10
    return [*sizes, target]


def main_run(args: argparse.Namespace) -> dict[str, Any]:
    from feast import __version__ as feast_version

    manifest = data.read_manifest(args.data)
    if manifest is None:
        raise SystemExit(f"{args.data} holds no data set: run bench/feast_baseline/data.py first")
    spec = data.DataSpec(**manifest["spec"])
    result: dict[str, Any] = {
        "engine": "feast",
        "feast_version": feast_version,
        "python": platform.python_version(),
        "data_spec": manifest["spec"],
        "data_rows": manifest["rows"],
        "configuration": {
            "provider": "local",
            "offline_store": "file (dask), FileSource on the Parquet files",
            "online_store": "sqlite",
            "registry": "local file",
            "ttl_days": data.TTL_DAYS,
            "feature_server": "feast serve (gunicorn + uvicorn worker), "
            f"{args.workers} worker(s), --no-access-log, --max-requests 0",
            "http_client": "http.client, one keep-alive connection, JSON parsed",
        },
        "semantics": SEMANTICS,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    entities = pq.read_table(data.table_files(args.data)["entities"])[data.ENTITY_KEY]
    loan_ids = entities.to_pylist()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="feast-bench-"))
    try:
        return _measure_all(args, result, workdir, loan_ids, spec)
    finally:
        if args.workdir is None and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def prepare(
    repo: Path, data_dir: Path, ttl: timedelta, spec: data.DataSpec
) -> tuple[Any, dict[str, float]]:
    """A Feast repository over the data, applied and materialized: (FeatureStore, timings)."""
    from feast import FeatureStore

    write_repo(repo, data_dir, ttl)
    setup: dict[str, float] = {}
    setup["apply_s"] = run_cli(repo, "apply", timeout=600)
    store = FeatureStore(repo_path=str(repo))
    started = time.perf_counter()
    log("materializing")
    store.materialize(spec.start_datetime - timedelta(days=1), spec.end_datetime)
    setup["materialize_s"] = round(time.perf_counter() - started, 3)
    return store, setup


def serve(args: argparse.Namespace, announce: Callable[[dict[str, Any]], None]) -> None:
    """``feast serve`` over the data until stdin closes; ``announce`` gets its port first.

    For benchmarks that call Feast's feature server side by side with another service
    in one measurement (``bench.features_serving``).
    """
    manifest = data.read_manifest(args.data)
    if manifest is None:
        raise SystemExit(f"{args.data} holds no data set: run bench/feast_baseline/data.py first")
    spec = data.DataSpec(**manifest["spec"])
    with tempfile.TemporaryDirectory(prefix="feast-serve-") as workdir:
        repo = Path(workdir) / "feature_repo"
        _, setup = prepare(repo, args.data, timedelta(days=data.TTL_DAYS), spec)
        with FeatureServer(repo, Path(workdir) / "feast-serve.log", workers=args.workers) as server:
            announce({"port": server.port, "features": data.feature_refs(), "setup_s": setup})
            sys.stdin.read()  # until the caller closes our stdin (or exits)


def _measure_all(
    args: argparse.Namespace,
    result: dict[str, Any],
    workdir: Path,
    loan_ids: list[str],
    spec: data.DataSpec,
) -> dict[str, Any]:
    manifest = data.read_manifest(args.data) or {}
    ttl = timedelta(days=data.TTL_DAYS)
    features = data.feature_refs()
    rng = random.Random(args.seed)
    repo = workdir / "feature_repo"
    feast_version = result["feast_version"]
    log(f"feast {feast_version}; repository in {repo}")
    store, setup = prepare(repo, args.data, ttl, spec)
    result["setup_s"] = setup
    db = repo / "data" / "online_store.db"
    result["online_store_mib"] = round(db.stat().st_size / 2**20, 1)
    log(f"setup {setup}")

    def batch(size: int) -> list[str]:
        return [loan_ids[j] for j in rng.sample(range(len(loan_ids)), size)]

    singles = [batch(1) for _ in range(args.http_warmup + args.requests)]
    batches = [batch(args.batch) for _ in range(args.warmup + args.batch_requests)]

    # In process: FeatureStore.get_online_features (SQLite), 100 entities and 1 entity.
    def online(ids: list[str]) -> Any:
        return store.get_online_features(
            features=features, entity_rows=[{data.ENTITY_KEY: x} for x in ids]
        )

    check = online(batches[0]).to_dict()
    nulls = sum(v is None for name, col in check.items() if name != data.ENTITY_KEY for v in col)
    result["online_check"] = {
        "entities": len(batches[0]),
        "columns": len(check),
        "null_values": nulls,
    }
    log(f"in-process check: {result['online_check']}")
    keep = args.include_samples
    result["inprocess_batch"] = measure(
        lambda i: online(batches[i]),
        requests=args.batch_requests,
        warmup=args.warmup,
        keep_samples=keep,
    )
    result["inprocess_batch_to_dict"] = measure(
        lambda i: online(batches[i]).to_dict(),
        requests=args.batch_requests,
        warmup=args.warmup,
        keep_samples=keep,
    )
    result["inprocess_single"] = measure(
        lambda i: online(singles[i]),
        requests=args.requests,
        warmup=args.http_warmup,
        keep_samples=keep,
    )
    log(
        "in process: 100 entities p50 "
        f"{result['inprocess_batch']['latency_ms']['p50']} ms, "
        f"p99 {result['inprocess_batch']['latency_ms']['p99']} ms"
    )

    # Over HTTP: feast serve.
    if not args.skip_http:
        with FeatureServer(repo, workdir / "feast-serve.log", workers=args.workers) as server:
            client = HttpClient(server.port, features)
            try:
                reply = client.get(batches[0])
                http_values = [r["values"] for r in reply["results"]]
                result["http_check"] = {
                    "feature_names": len(reply["metadata"]["feature_names"]),
                    "same_as_in_process": all(
                        http_values[k] == check[name]
                        for k, name in enumerate(reply["metadata"]["feature_names"])
                    ),
                }
                log(f"HTTP check: {result['http_check']}")
                result["http_single"] = measure(
                    lambda i: client.get(singles[i]),
                    requests=args.requests,
                    warmup=args.http_warmup,
                    keep_samples=keep,
                )
                result["http_batch"] = measure(
                    lambda i: client.get(batches[i]),
                    requests=args.batch_requests,
                    warmup=args.warmup,
                    keep_samples=keep,
                )
            finally:
                client.close()
        log(
            f"HTTP: 1 entity p50 {result['http_single']['latency_ms']['p50']} ms, "
            f"p99 {result['http_single']['latency_ms']['p99']} ms"
        )

    # Historical retrieval, growing label counts, each in a child process.
    target = min(args.historical_labels, manifest["rows"]["labels"])
    historical: list[dict[str, Any]] = []
    modes = (
        [False, True] if args.historical_modes == "both" else [args.historical_modes == "filter"]
    )
    spent = 0.0
    for filter_by_created in modes:
        previous: dict[str, Any] | None = None
        for size in _sizes(target) if target > 0 else []:
            left = args.historical_budget_s - spent
            if previous is not None and "retrieve_s" in previous:
                projected = previous["wall_s"] * size / previous["labels"]
                if projected > left:
                    historical.append(
                        {
                            "labels": size,
                            "filter_by_created_timestamp": filter_by_created,
                            "skipped": f"projected {projected:.0f} s > {left:.0f} s of budget",
                        }
                    )
                    break
            log(f"historical: {size} labels, filter_by_created_timestamp={filter_by_created}")
            entry = run_historical(
                repo,
                args.data,
                size,
                filter_by_created=filter_by_created,
                timeout_s=max(left, 1),
                memory_limit_mib=args.memory_limit_mib,
            )
            spent += entry["wall_s"]
            historical.append(entry)
            log(f"  -> {entry}")
            if "error" in entry:
                break
            previous = entry
    result["historical"] = historical
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["max_rss_mib"] = max_rss_mib()
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Feast baselines on the benchmark data.")
    parser.add_argument("data", type=Path, help="directory written by data.py")
    parser.add_argument("--requests", type=int, default=3000, help="1-entity requests")
    parser.add_argument("--http-warmup", type=int, default=300, help="1-entity warm-up requests")
    parser.add_argument("--batch", type=int, default=100, help="entities per batch request")
    parser.add_argument("--batch-requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100, help="batch warm-up requests")
    parser.add_argument("--workers", type=int, default=1, help="feast serve workers")
    parser.add_argument("--skip-http", action="store_true", help="no feast serve")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="only run feast serve over the data: print {port, features} as a JSON line, "
        "then serve until stdin closes",
    )
    parser.add_argument("--historical-labels", type=int, default=1_000_000)
    parser.add_argument("--historical-modes", choices=["default", "filter", "both"], default="both")
    parser.add_argument("--historical-budget-s", type=float, default=1800)
    parser.add_argument("--memory-limit-mib", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="kept (default: a temp dir, removed)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir")
    parser.add_argument("--include-samples", action="store_true", help="raw latencies (ns)")
    child = parser.add_argument_group("one historical retrieval (used by the run itself)")
    child.add_argument("--historical-only", type=int, metavar="LABELS", default=None)
    child.add_argument("--repo", type=Path, default=None)
    child.add_argument("--filter-by-created", action="store_true")
    child.add_argument("--dump", type=Path, default=None, help="write the result as Parquet")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.historical_only is not None and args.repo is None:
        _parser().error("--historical-only needs --repo")
    # Feast prints progress (materialize) on stdout; stdout carries only the JSON result.
    if args.serve:
        out = sys.stdout

        def announce(info: dict[str, Any]) -> None:
            out.write(json.dumps(info) + "\n")
            out.flush()

        with contextlib.redirect_stdout(sys.stderr):
            serve(args, announce)
        return
    with contextlib.redirect_stdout(sys.stderr):
        run = historical_child if args.historical_only is not None else main_run
        result = run(args)
    json.dump(result, sys.stdout, indent=None if args.historical_only is not None else 2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
