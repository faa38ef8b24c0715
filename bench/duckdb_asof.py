"""DuckDB point-in-time joins: the in-memory baseline for ``GetHistoricalFeatures``.

Two joins of a label table (``loan_id, event_time, ...``) with feature views
(``loan_id, event_time, created_time, <features>``), both over tables already
loaded into an in-memory DuckDB connection (loading is timed apart):

``asof_pit_join``: the plain primitive, one ``ASOF LEFT JOIN ... ON l.loan_id =
f.loan_id AND l.event_time >= f.event_time`` per view. It knows nothing of
``created_time`` (of two versions with the same event time it returns either)
and has no TTL: the floor under any point-in-time join.

``bitemporal_pit_join``: what a leak-free training set needs. For a label at time
``t`` a feature row counts only if ``event_time <= t`` AND ``created_time <= t``
(it had been written by then); among those the latest ``event_time`` wins, ties
broken by the latest ``created_time``; and if the winner's ``event_time`` is
older than ``t - ttl`` the view's values are null. Feast's default
``get_historical_features`` applies only the first and last rules, using
``created_time`` as a tie-breaker even when that version was written after ``t``
(so a late correction leaks into earlier labels).

How the bitemporal join runs in one pass per view (``method="running_argmax"``):
a row becomes visible at ``visible_at = greatest(event_time, created_time)``.
Sort each loan's rows by ``visible_at`` and carry a running arg-max of
``(event_time, created_time)`` (a window ``arg_max`` whose frame is every row
visible so far, peers included): at each ``visible_at`` it is exactly the row a
query at that instant must return. A plain ASOF join on ``visible_at`` then
finds, for each label, the last such instant at or before ``t``. A row that is
visible at ``t`` has ``event_time <= t``, so nothing else needs checking, and a
stale winner means every visible row is stale, so the TTL is a null-out after
the join. ``method="record_setters"`` gives the same answer by keeping only the
rows that raise their loan's running maximum when they become visible (the
"current" row can change only at those) and ASOF-joining those; it avoids
packing the features into a struct and is a little faster.

Command line (the Lathe environment; duckdb is a benchmark-only dependency)::

    .venv/bin/python -m bench.duckdb_asof DIR [--repeats 3] [--threads N] [--labels N]

where DIR holds the Parquet files of ``bench/feast_baseline/data.py``. It
prints one JSON object: load time, then rows and best-of-N seconds of each join.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from bench.feast_baseline import data

Method = Literal["running_argmax", "record_setters"]
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _q(name: str) -> str:
    """A quoted SQL identifier; only plain names are accepted (no injection, no surprises)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


@dataclass(frozen=True)
class ViewSpec:
    """A feature view: a table in the connection and the columns the join needs."""

    name: str
    """The table (or view) holding the rows, one per (entity, event_time, created_time)."""
    features: tuple[str, ...]
    ttl: timedelta | None = None
    """Values whose event_time is older than the label time minus this are null."""
    entity_key: str = data.ENTITY_KEY
    event_time: str = data.EVENT_TIME
    created_time: str = data.CREATED_TIME

    def __post_init__(self) -> None:
        reserved = {self.entity_key, self.event_time, self.created_time}
        for name in (self.name, *reserved, *self.features):
            _q(name)
        if not self.features or reserved & set(self.features):
            raise ValueError(f"view {self.name}: features must be non-empty and not key columns")
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise ValueError(f"view {self.name}: ttl must be positive (or None for no TTL)")


@dataclass(frozen=True)
class LabelSpec:
    """The label (entity) table: its entity key and the time each label is as of."""

    name: str = "labels"
    entity_key: str = data.ENTITY_KEY
    event_time: str = data.EVENT_TIME


def benchmark_views(ttl: timedelta | None = timedelta(days=data.TTL_DAYS)) -> list[ViewSpec]:
    """The benchmark's five views (tables named after them), with the benchmark's TTL."""
    return [ViewSpec(view, tuple(data.feature_names(view)), ttl) for view in data.VIEWS]


def _output_names(views: Sequence[ViewSpec], full_feature_names: bool) -> list[list[str]]:
    names = [[f"{v.name}__{f}" if full_feature_names else f for f in v.features] for v in views]
    flat = [n for group in names for n in group]
    if len(set(flat)) != len(flat):
        raise ValueError("two views share a feature name: use full_feature_names=True")
    return names


# --- SQL -------------------------------------------------------------------------------


def _select(columns: Sequence[str]) -> str:
    return "SELECT\n  " + ",\n  ".join(columns)


def asof_join_sql(
    labels: LabelSpec | str, views: Sequence[ViewSpec], *, full_feature_names: bool = False
) -> str:
    """The plain ASOF join: latest ``event_time <= t`` per view; no created_time, no TTL."""
    labels = LabelSpec(labels) if isinstance(labels, str) else labels
    names = _output_names(views, full_feature_names)
    select = ["l.*"]
    joins = []
    for i, (view, outputs) in enumerate(zip(views, names, strict=True)):
        select += [f"v{i}.{_q(f)} AS {_q(o)}" for f, o in zip(view.features, outputs, strict=True)]
        joins.append(
            f"ASOF LEFT JOIN {_q(view.name)} AS v{i}\n"
            f"  ON l.{_q(labels.entity_key)} = v{i}.{_q(view.entity_key)}"
            f" AND l.{_q(labels.event_time)} >= v{i}.{_q(view.event_time)}"
        )
    return "\n".join([f"{_select(select)}\nFROM {_q(labels.name)} AS l", *joins])


def current_rows_sql(view: ViewSpec, method: Method = "running_argmax") -> str:
    """Per entity and ``visible_at``: the row a bitemporal query from that instant on returns.

    Columns ``entity, visible_at, <event_time>, <features>``; ASOF-join labels on
    ``visible_at`` to pick, for a label at ``t``, the last instant at or before ``t``.
    """
    key, et, ct = _q(view.entity_key), _q(view.event_time), _q(view.created_time)
    payload = [_q(f) for f in (view.event_time, *view.features)]
    if method == "running_argmax":
        packed = ", ".join(f"'{f}': {_q(f)}" for f in (view.event_time, *view.features))
        unpacked = [f"cur.{c} AS {c}" for c in payload]
        return (
            f"SELECT entity, visible_at, {', '.join(unpacked)}\n"
            f"FROM (\n"
            f"  SELECT\n"
            f"    {key} AS entity,\n"
            f"    greatest({et}, {ct}) AS visible_at,\n"
            f"    -- the latest (event_time, created_time) among the rows visible by now\n"
            f"    arg_max({{{packed}}}, {{'e': {et}, 'c': {ct}}}) OVER (\n"
            f"      PARTITION BY {key} ORDER BY greatest({et}, {ct})\n"
            f"      RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW\n"
            f"    ) AS cur\n"
            f"  FROM {_q(view.name)}\n"
            f")"
        )
    if method == "record_setters":
        # Rows ordered by (visible_at, version): a row matters only if its version beats every
        # earlier one's, and of rows sharing a visible_at only the last can (so ASOF sees each
        # visible_at once).
        window = "PARTITION BY entity ORDER BY visible_at, version"
        return (
            f"SELECT entity, visible_at, {', '.join(payload)}\n"
            f"FROM (\n"
            f"  SELECT\n"
            f"    *,\n"
            f"    max(version) OVER (\n"
            f"      {window} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING\n"
            f"    ) AS best_before,\n"
            f"    lead(visible_at) OVER ({window}) AS next_visible_at\n"
            f"  FROM (\n"
            f"    SELECT\n"
            f"      {key} AS entity,\n"
            f"      greatest({et}, {ct}) AS visible_at,\n"
            f"      {{'e': {et}, 'c': {ct}}} AS version,\n"
            f"      {', '.join(payload)}\n"
            f"    FROM {_q(view.name)}\n"
            f"  )\n"
            f")\n"
            f"WHERE (best_before IS NULL OR version > best_before)\n"
            f"  AND next_visible_at IS DISTINCT FROM visible_at"
        )
    raise ValueError(f"unknown method {method!r}")


def bitemporal_join_sql(
    labels: LabelSpec | str,
    views: Sequence[ViewSpec],
    *,
    method: Method = "running_argmax",
    full_feature_names: bool = False,
    timelines: Mapping[str, str] | None = None,
) -> str:
    """The bitemporal point-in-time join with TTLs (see the module docstring).

    ``timelines`` maps a view's name to a table already holding its
    ``current_rows_sql`` (see ``build_timelines``); other views compute it inline.
    """
    labels = LabelSpec(labels) if isinstance(labels, str) else labels
    names = _output_names(views, full_feature_names)
    lt = f"l.{_q(labels.event_time)}"
    ctes, select, joins = [], ["l.*"], []
    for i, (view, outputs) in enumerate(zip(views, names, strict=True)):
        if timelines and view.name in timelines:
            ctes.append(f"v{i} AS (SELECT * FROM {_q(timelines[view.name])})")
        else:
            body = current_rows_sql(view, method).replace("\n", "\n  ")
            ctes.append(f"v{i} AS (\n  {body}\n)")
        fresh = None
        if view.ttl is not None:
            ttl_us = round(view.ttl / timedelta(microseconds=1))
            fresh = f"v{i}.{_q(view.event_time)} >= {lt} - to_microseconds({ttl_us})"
        for feature, output in zip(view.features, outputs, strict=True):
            value = f"v{i}.{_q(feature)}"
            select.append(
                f"CASE WHEN {fresh} THEN {value} END AS {_q(output)}"
                if fresh
                else f"{value} AS {_q(output)}"
            )
        joins.append(
            f"ASOF LEFT JOIN v{i}\n"
            f"  ON l.{_q(labels.entity_key)} = v{i}.entity AND {lt} >= v{i}.visible_at"
        )
    head = f"WITH {', '.join(ctes)}\n{_select(select)}\nFROM {_q(labels.name)} AS l"
    return "\n".join([head, *joins])


def asof_pit_join(
    conn: duckdb.DuckDBPyConnection,
    labels_table: LabelSpec | str,
    views: Sequence[ViewSpec],
    *,
    full_feature_names: bool = False,
) -> pa.Table:
    """The plain ASOF join, materialized as Arrow; rows in no particular order."""
    sql = asof_join_sql(labels_table, views, full_feature_names=full_feature_names)
    return conn.sql(sql).to_arrow_table()


def bitemporal_pit_join(
    conn: duckdb.DuckDBPyConnection,
    labels_table: LabelSpec | str,
    views: Sequence[ViewSpec],
    *,
    method: Method = "running_argmax",
    full_feature_names: bool = False,
    timelines: Mapping[str, str] | None = None,
) -> pa.Table:
    """Each label row with every view's features as known at the label's time.

    A view's row counts for a label at ``t`` only if ``event_time <= t`` and
    ``created_time <= t``; the latest ``event_time`` wins, then the latest
    ``created_time``; a winner older than ``t - ttl`` gives nulls. Every label row
    appears exactly once (rows in no particular order): its own columns, then the
    features of each view in order (``<view>__<feature>`` with
    ``full_feature_names``). With ``timelines`` (from ``build_timelines``) the
    per-view step is read from those tables instead of being computed.
    """
    sql = bitemporal_join_sql(
        labels_table,
        views,
        method=method,
        full_feature_names=full_feature_names,
        timelines=timelines,
    )
    return conn.sql(sql).to_arrow_table()


def build_timelines(
    conn: duckdb.DuckDBPyConnection,
    views: Sequence[ViewSpec],
    *,
    method: Method = "record_setters",
    suffix: str = "__timeline",
) -> dict[str, str]:
    """Store each view's ``current_rows_sql`` as a table; view name -> table name.

    The timeline depends only on the view's rows, not on the labels: an offline
    store can keep it up to date as rows arrive, and a point-in-time join over it
    is a plain ASOF join.
    """
    tables: dict[str, str] = {}
    for view in views:
        table = f"{view.name}{suffix}"
        conn.execute(f"CREATE OR REPLACE TABLE {_q(table)} AS\n{current_rows_sql(view, method)}")
        tables[view.name] = table
    return tables


# --- the benchmark ---------------------------------------------------------------------


def load_tables(
    conn: duckdb.DuckDBPyConnection, directory: Path, *, labels: int | None = None
) -> dict[str, float]:
    """Copy every table of the data set into ``conn`` (in memory); seconds per table."""
    seconds: dict[str, float] = {}
    for name, path in data.table_files(directory).items():
        if name == "entities":
            continue
        limit = f" LIMIT {int(labels)}" if name == "labels" and labels is not None else ""
        started = time.perf_counter()
        conn.execute(
            f"CREATE OR REPLACE TABLE {_q(name)} AS SELECT * FROM read_parquet(?){limit}",
            [str(path)],
        )
        seconds[name] = round(time.perf_counter() - started, 3)
    return seconds


def max_rss_mib() -> int:
    """This process's peak RSS, whatever else it did (VmHWM; ru_maxrss survives fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _scalar(conn: duckdb.DuckDBPyConnection, sql: str) -> Any:
    # conn.sql(...).fetchall() reads the result to the end; DuckDB 2 refuses new work on a
    # connection whose execute() result was left unfinished.
    return conn.sql(sql).fetchall()[0][0]


@dataclass
class Timing:
    rows: int
    seconds: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "best_s": round(min(self.seconds), 3),
            "all_s": [round(s, 3) for s in self.seconds],
        }


def _time(run: Any, repeats: int) -> Timing:
    timing = Timing(rows=0)
    for _ in range(repeats):
        started = time.perf_counter()
        table = run()
        timing.seconds.append(time.perf_counter() - started)
        timing.rows = table.num_rows
        del table
    return timing


def run_baseline(
    directory: Path,
    *,
    repeats: int = 3,
    threads: int | None = None,
    labels: int | None = None,
    methods: Sequence[Method] = ("running_argmax", "record_setters"),
) -> dict[str, Any]:
    """Load the data set into memory, then time both joins; a JSON-ready result."""
    directory = Path(directory)
    manifest = data.read_manifest(directory) or {}
    conn = duckdb.connect(":memory:")
    try:
        if threads is not None:
            conn.execute(f"SET threads = {int(threads)}")
        load_before = os.getloadavg()
        load_s = load_tables(conn, directory, labels=labels)
        label_rows = _scalar(conn, "SELECT count(*) FROM labels")
        views = benchmark_views()
        simple = _time(lambda: asof_pit_join(conn, "labels", views), repeats)
        bitemporal = {
            method: _time(
                lambda m=method: bitemporal_pit_join(conn, "labels", views, method=m), repeats
            )
            for method in methods
        }
        started = time.perf_counter()
        timelines = build_timelines(conn, views)
        timelines_s = time.perf_counter() - started
        precomputed = _time(
            lambda: bitemporal_pit_join(conn, "labels", views, timelines=timelines), repeats
        )
        return {
            "engine": "duckdb",
            "duckdb_version": duckdb.__version__,
            "threads": _scalar(conn, "SELECT current_setting('threads')"),
            "data_spec": manifest.get("spec"),
            "label_rows": label_rows,
            "views": len(views),
            "features": sum(len(v.features) for v in views),
            "ttl_days": data.TTL_DAYS,
            "load_s": load_s,
            "load_total_s": round(sum(load_s.values()), 3),
            "asof_simple": simple.summary(),
            "bitemporal": {method: timing.summary() for method, timing in bitemporal.items()},
            "bitemporal_precomputed_timelines": {
                **precomputed.summary(),
                "build_timelines_s": round(timelines_s, 3),
            },
            "repeats": repeats,
            "max_rss_mib": max_rss_mib(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "notes": [
                "Tables are loaded into DuckDB memory first (load_s, not counted); each join "
                "is materialized as an Arrow table; best of `repeats`.",
                "asof_simple: one ASOF LEFT JOIN per view on event_time only; no TTL, "
                "created_time ignored (ties between a row and its late correction resolved "
                "arbitrarily).",
                "bitemporal: event_time <= t AND created_time <= t, latest event_time then "
                f"latest created_time, values older than {data.TTL_DAYS} days nulled.",
                "bitemporal_precomputed_timelines: the same join over per-view timelines "
                "stored beforehand (build_timelines, record_setters; its time reported apart) "
                "- what an offline store that maintains them as rows arrive would pay.",
            ],
        }
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DuckDB ASOF baselines (prints JSON).")
    parser.add_argument("directory", type=Path, help="Parquet files from data.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    parser.add_argument("--labels", type=int, default=None, help="use only the first N labels")
    args = parser.parse_args(argv)
    result = run_baseline(
        args.directory, repeats=args.repeats, threads=args.threads, labels=args.labels
    )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
