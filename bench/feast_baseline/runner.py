"""Drive the Feast baseline from Lathe's environment, and check what Feast returns.

Feast lives in its own virtual environment (``bench/feast_baseline/.venv``, made by
``setup.sh``) and is never imported here: ``run_feast`` starts
``bench/feast_baseline/run_feast.py`` with that environment's Python and returns
the JSON it prints. ``compare_historical`` puts a training set Feast wrote next to
``bench.duckdb_asof.bitemporal_pit_join`` on the same labels, so the benchmark
can say how far Feast's answer is from the leak-free one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
VENV_PYTHON = HERE / ".venv" / "bin" / "python"


class FeastUnavailable(RuntimeError):
    """Feast's environment has not been set up on this machine."""


def feast_python() -> Path:
    if not VENV_PYTHON.exists():
        raise FeastUnavailable(
            f"{VENV_PYTHON} is missing: run `bash bench/feast_baseline/setup.sh` first"
        )
    return VENV_PYTHON


def _run(args: Sequence[str], *, timeout_s: float | None, log: Path | None) -> str:
    command = [str(feast_python()), "-m", "bench.feast_baseline.run_feast", *args]
    if log is not None:
        with log.open("ab") as err:
            done = subprocess.run(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, timeout=timeout_s
            )
    else:
        done = subprocess.run(
            command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=sys.stderr, timeout=timeout_s
        )
    if done.returncode != 0:
        where = f"; its log: {log}\n{log.read_text()[-3000:]}" if log is not None else ""
        raise RuntimeError(f"run_feast failed (exit {done.returncode}){where}")
    return done.stdout.decode()


def run_feast(
    data_dir: Path,
    args: Sequence[str] = (),
    *,
    timeout_s: float | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """The whole Feast baseline (see run_feast.py for ``args``); its JSON result."""
    return dict(json.loads(_run([str(data_dir), *args], timeout_s=timeout_s, log=log)))


@dataclass(frozen=True)
class FeastServer:
    """A running ``feast serve`` over the benchmark data."""

    port: int
    features: list[str]
    setup_s: dict[str, float]


@contextlib.asynccontextmanager
async def feast_server(
    data_dir: Path, log: Path, *, start_timeout_s: float = 1800
) -> AsyncIterator[FeastServer]:
    """``feast serve`` over ``data_dir`` (applied and materialized first) while the block runs."""
    command = [str(feast_python()), "-m", "bench.feast_baseline.run_feast", str(data_dir)]
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            *command,
            "--serve",
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert process.stdin is not None and process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), start_timeout_s)
        if not line:
            await process.wait()
            tail = (await asyncio.to_thread(log.read_text))[-3000:]
            raise RuntimeError(
                f"feast serve did not start (exit {process.returncode}); its log: {log}\n{tail}"
            )
        info = json.loads(line)
        yield FeastServer(info["port"], list(info["features"]), dict(info["setup_s"]))
    finally:
        process.stdin.close()  # run_feast stops the server when its stdin closes
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


def feast_historical(
    data_dir: Path,
    repo: Path,
    labels: int,
    dump: Path,
    *,
    filter_by_created: bool = False,
    timeout_s: float | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """One get_historical_features over the first ``labels`` labels, written to ``dump``."""
    args = [str(data_dir), "--historical-only", str(labels), "--repo", str(repo)]
    args += ["--dump", str(dump)] + (["--filter-by-created"] if filter_by_created else [])
    text = _run(args, timeout_s=timeout_s, log=log)
    return dict(json.loads(text.strip().splitlines()[-1]))


def compare_historical(data_dir: Path, feast_parquet: Path, labels: int) -> dict[str, Any]:
    """Feast's training set vs DuckDB's bitemporal join of the same first ``labels`` labels."""
    import duckdb

    from bench.duckdb_asof import benchmark_views, bitemporal_pit_join, load_tables

    conn = duckdb.connect(":memory:")
    try:
        load_tables(conn, data_dir, labels=labels)
        views = benchmark_views()
        conn.register("expected", bitemporal_pit_join(conn, "labels", views))
        conn.execute("CREATE TABLE feast AS SELECT * FROM read_parquet(?)", [str(feast_parquet)])
        match = "f.loan_id = e.loan_id AND f.event_timestamp = e.event_time AND f.label = e.label"

        def count(sql: str) -> int:
            return int(conn.sql(sql).fetchall()[0][0])

        def any_null(alias: str, features: Sequence[str]) -> str:
            return " OR ".join(f'{alias}."{f}" IS NULL' for f in features)

        all_features = [f for v in views for f in v.features]
        per_view = {}
        for view in views:
            differs = " OR ".join(f'f."{x}" IS DISTINCT FROM e."{x}"' for x in view.features)
            per_view[view.name] = count(
                f"SELECT count(*) FROM feast f JOIN expected e ON {match} WHERE {differs}"
            )
        differs_any = " OR ".join(f'f."{x}" IS DISTINCT FROM e."{x}"' for x in all_features)
        return {
            "labels": labels,
            "feast_rows": count("SELECT count(*) FROM feast"),
            "bitemporal_rows": count("SELECT count(*) FROM expected"),
            "bitemporal_rows_with_a_null_view": count(
                f"SELECT count(*) FROM expected e WHERE {any_null('e', all_features)}"
            ),
            "label_rows_missing_from_feast": count(
                f"SELECT count(*) FROM expected e ANTI JOIN feast f ON {match}"
            ),
            "missing_rows_with_all_views_present": count(
                f"SELECT count(*) FROM expected e ANTI JOIN feast f ON {match} "
                f"WHERE NOT ({any_null('e', all_features)})"
            ),
            "rows_differing_from_bitemporal": count(
                f"SELECT count(*) FROM feast f JOIN expected e ON {match} WHERE {differs_any}"
            ),
            "rows_differing_per_view": per_view,
        }
    finally:
        conn.close()
