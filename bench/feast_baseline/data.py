"""The feature store benchmark's data: one deterministic lending data set for every contender.

Lathe's ``features.*`` benchmark, the Feast baselines (run in Feast's own
environment, ``bench/feast_baseline/.venv``) and the DuckDB baselines all read the
same Parquet files written here, so every number is measured on identical data.
This module therefore imports only numpy and pyarrow (present in both
environments) and the standard library; the same seed gives the same tables in
either environment.

The data set (sizes are parameters of ``DataSpec``):

* ``entities.parquet``: ``loan_id`` ("L0000001", ...), one row per loan.
* five feature views, ``<view>.parquet``, four features each (20 in all, see
  ``VIEWS``): rows ``(loan_id, event_time, created_time, <features>)``, on average
  ``rows_per_entity`` rows per loan spread over the time range. ``event_time`` is
  when the fact held; ``created_time`` when it was written (``>= event_time``,
  normally within a day). A ``correction_fraction`` of rows are *late
  corrections*: a second version of an existing ``(loan_id, event_time)`` with
  other values, written 7 to 180 days later. ``(loan_id, event_time)`` is unique
  apart from these corrections, and ``(loan_id, event_time, created_time)`` is
  always unique, so "the latest row" is always well defined. Rows are stored in
  arrival (``created_time``) order, as an append-only log would hold them.
* ``labels.parquet``: ``(loan_id, event_time, label)``, ``labels`` rows with
  random loans and times spread uniformly over the same range (the entity
  dataframe of a training set).

Timestamps are ``timestamp[us, tz=UTC]`` with whole-second values (Postgres
``timestamptz`` and DuckDB ``TIMESTAMPTZ`` hold them exactly). ``manifest.json``
records the spec, the files and their row counts; ``write_dataset`` reuses a
directory whose manifest matches the spec.

Command line (either environment)::

    python bench/feast_baseline/data.py DIR [--entities N] [--labels N] [--seed S] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT = "lathe-features-bench/1"
"""Bumped whenever the generator's output for a given spec changes."""

ENTITY_KEY = "loan_id"
EVENT_TIME = "event_time"
CREATED_TIME = "created_time"
LABEL = "label"
TTL_DAYS = 365
"""The feature views' time-to-live: a value older than this at the label time is null."""

VIEWS: dict[str, tuple[tuple[str, str], ...]] = {
    "loan_terms": (
        ("interest_rate", "float64"),
        ("term_months", "int64"),
        ("loan_amount", "float64"),
        ("installment", "float64"),
    ),
    "credit_profile": (
        ("fico", "int64"),
        ("dti", "float64"),
        ("open_lines", "int64"),
        ("delinq_2y", "int64"),
    ),
    "payments": (
        ("paid_total", "float64"),
        ("paid_late_fees", "float64"),
        ("payments_made", "int64"),
        ("days_past_due", "int64"),
    ),
    "income": (
        ("annual_income", "float64"),
        ("verified", "int64"),
        ("employment_years", "int64"),
        ("income_to_loan", "float64"),
    ),
    "bureau": (
        ("inquiries_6m", "int64"),
        ("accounts_opened_24m", "int64"),
        ("utilization", "float64"),
        ("bankruptcies", "int64"),
    ),
}
"""Feature view name -> ((feature, dtype), ...): 5 views x 4 features."""

_SECOND = 1_000_000  # microseconds
_DAY_S = 86_400
_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class DataSpec:
    """Everything that determines the data set; the defaults are the full benchmark's."""

    seed: int = 20240601
    entities: int = 100_000
    rows_per_entity: int = 10
    """Mean rows per loan and view (each loan gets 1 to 2x-1, uniformly), before corrections."""
    labels: int = 1_000_000
    correction_fraction: float = 0.02
    """Share of each view's rows that get a late correction (a second, later-written version)."""
    start: str = "2023-01-01T00:00:00+00:00"
    days: int = 730
    """Length of the time range that event times and label times are drawn from."""
    positive_rate: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.entities <= 9_999_999:
            raise ValueError("entities must be between 1 and 9,999,999 (7-digit loan ids)")
        if self.rows_per_entity < 1 or self.labels < 0 or self.days < 1:
            raise ValueError("rows_per_entity and days must be >= 1, labels >= 0")
        if not 0 <= self.correction_fraction <= 1:
            raise ValueError("correction_fraction must be within [0, 1]")

    @property
    def start_datetime(self) -> datetime:
        return datetime.fromisoformat(self.start).astimezone(UTC)

    @property
    def end_datetime(self) -> datetime:
        return self.start_datetime + timedelta(days=self.days)


def feature_names(view: str) -> list[str]:
    return [name for name, _ in VIEWS[view]]


def feature_refs() -> list[str]:
    """All 20 features as Feast-style references, ``<view>:<feature>``."""
    return [f"{view}:{name}" for view in VIEWS for name in feature_names(view)]


def loan_ids(count: int) -> pa.Array:
    """``L0000001`` ... for loans 1..count."""
    return pa.array([f"L{i:07d}" for i in range(1, count + 1)], type=pa.string())


def _rng(spec: DataSpec, stream: str) -> np.random.Generator:
    """An independent, reproducible random stream per table (sizes of one never shift another)."""
    return np.random.default_rng([spec.seed, zlib.crc32(stream.encode())])


def _timestamps(spec: DataSpec, seconds: np.ndarray) -> pa.Array:
    start_us = int(spec.start_datetime.timestamp()) * _SECOND
    return pa.array(start_us + seconds.astype(np.int64) * _SECOND, type=pa.int64()).cast(_TIMESTAMP)


def entity_table(spec: DataSpec) -> pa.Table:
    return pa.table({ENTITY_KEY: loan_ids(spec.entities)})


# --- feature values ------------------------------------------------------------------


def _loan_terms(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    rate = np.round(rng.uniform(0.05, 0.30, n), 4)
    term = rng.choice(np.array([36, 60], dtype=np.int64), n)
    amount = np.round(rng.uniform(1_000, 40_000, n), 2)
    monthly = rate / 12
    installment = np.round(amount * monthly / (1 - (1 + monthly) ** -term), 2)
    return {
        "interest_rate": rate,
        "term_months": term,
        "loan_amount": amount,
        "installment": installment,
    }


def _credit_profile(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "fico": np.clip(np.round(rng.normal(700, 50, n)), 300, 850).astype(np.int64),
        "dti": np.round(rng.uniform(0, 45, n), 2),
        "open_lines": rng.poisson(10, n).astype(np.int64),
        "delinq_2y": rng.poisson(0.3, n).astype(np.int64),
    }


def _payments(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    made = rng.integers(0, 61, n, dtype=np.int64)
    late = rng.random(n) < 0.1
    return {
        "paid_total": np.round(made * rng.uniform(50, 1_200, n), 2),
        "paid_late_fees": np.where(late, np.round(rng.uniform(15, 150, n), 2), 0.0),
        "payments_made": made,
        "days_past_due": np.where(late, rng.integers(1, 121, n), 0).astype(np.int64),
    }


def _income(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    income = np.round(rng.lognormal(11.0, 0.5, n), 2)
    return {
        "annual_income": income,
        "verified": (rng.random(n) < 0.7).astype(np.int64),
        "employment_years": rng.integers(0, 11, n, dtype=np.int64),
        "income_to_loan": np.round(income / rng.uniform(1_000, 40_000, n), 4),
    }


def _bureau(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "inquiries_6m": rng.poisson(1.0, n).astype(np.int64),
        "accounts_opened_24m": rng.poisson(3.0, n).astype(np.int64),
        "utilization": np.round(rng.beta(2, 5, n), 4),
        "bankruptcies": rng.poisson(0.05, n).astype(np.int64),
    }


_GENERATORS: dict[str, Callable[[np.random.Generator, int], dict[str, np.ndarray]]] = {
    "loan_terms": _loan_terms,
    "credit_profile": _credit_profile,
    "payments": _payments,
    "income": _income,
    "bureau": _bureau,
}


def view_table(spec: DataSpec, view: str) -> pa.Table:
    """One feature view's rows, corrections included, in arrival (``created_time``) order."""
    if view not in VIEWS:
        raise KeyError(f"unknown feature view {view!r}; known: {', '.join(VIEWS)}")
    rng = _rng(spec, f"view:{view}")
    span_s = spec.days * _DAY_S
    counts = rng.integers(1, 2 * spec.rows_per_entity, spec.entities)
    entity = np.repeat(np.arange(spec.entities, dtype=np.int64), counts)
    event_s = rng.integers(0, span_s, entity.size, dtype=np.int64)
    # One row per (loan, event second) before corrections.
    order = np.lexsort((event_s, entity))
    entity, event_s = entity[order], event_s[order]
    first = np.ones(entity.size, dtype=bool)
    first[1:] = (entity[1:] != entity[:-1]) | (event_s[1:] != event_s[:-1])
    entity, event_s = entity[first], event_s[first]
    # Written a few seconds to hours after the fact (never more than a day).
    created_s = event_s + np.minimum(rng.exponential(3_600, entity.size), _DAY_S - 1).astype(
        np.int64
    )
    # Late corrections: a new version of an existing (loan, event_time), written much later.
    fixed = np.sort(
        rng.choice(entity.size, round(spec.correction_fraction * entity.size), replace=False)
    )
    fixed_created_s = event_s[fixed] + rng.integers(7 * _DAY_S, 180 * _DAY_S, fixed.size)
    entity = np.concatenate([entity, entity[fixed]])
    event_s = np.concatenate([event_s, event_s[fixed]])
    created_s = np.concatenate([created_s, fixed_created_s])
    values = _GENERATORS[view](rng, entity.size)
    arrival = np.lexsort((event_s, entity, created_s))
    columns: dict[str, pa.Array] = {
        ENTITY_KEY: loan_ids(spec.entities).take(pa.array(entity[arrival])),
        EVENT_TIME: _timestamps(spec, event_s[arrival]),
        CREATED_TIME: _timestamps(spec, created_s[arrival]),
    }
    for name, dtype in VIEWS[view]:
        columns[name] = pa.array(values[name][arrival].astype(dtype))
    return pa.table(columns)


def label_table(spec: DataSpec) -> pa.Table:
    """The label rows (a training set's entity dataframe), in no particular order."""
    rng = _rng(spec, "labels")
    entity = rng.integers(0, spec.entities, spec.labels, dtype=np.int64)
    event_s = rng.integers(0, spec.days * _DAY_S, spec.labels, dtype=np.int64)
    label = (rng.random(spec.labels) < spec.positive_rate).astype(np.int64)
    return pa.table(
        {
            ENTITY_KEY: loan_ids(spec.entities).take(pa.array(entity)),
            EVENT_TIME: _timestamps(spec, event_s),
            LABEL: pa.array(label),
        }
    )


# --- files -----------------------------------------------------------------------------


def table_files(directory: Path) -> dict[str, Path]:
    """Table name -> Parquet path: ``entities``, ``labels`` and the five views."""
    names = ["entities", "labels", *VIEWS]
    return {name: Path(directory) / f"{name}.parquet" for name in names}


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / "manifest.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def write_dataset(spec: DataSpec, directory: Path, *, force: bool = False) -> dict[str, Any]:
    """Write every table as Parquet into ``directory``; return the manifest.

    A directory already holding this spec's data (same manifest) is left as it is.
    """
    directory = Path(directory)
    existing = read_manifest(directory)
    files = table_files(directory)
    if (
        not force
        and existing is not None
        and existing.get("format") == FORMAT
        and existing.get("spec") == dataclasses.asdict(spec)
        and all(path.exists() for path in files.values())
    ):
        return existing
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").unlink(missing_ok=True)
    rows: dict[str, int] = {}
    builders: dict[str, Callable[[], pa.Table]] = {
        "entities": lambda: entity_table(spec),
        "labels": lambda: label_table(spec),
        **{view: (lambda view=view: view_table(spec, view)) for view in VIEWS},
    }
    for name, build in builders.items():
        table = build()
        pq.write_table(table, files[name])
        rows[name] = table.num_rows
    manifest = {
        "format": FORMAT,
        "spec": dataclasses.asdict(spec),
        "entity_key": ENTITY_KEY,
        "event_time": EVENT_TIME,
        "created_time": CREATED_TIME,
        "ttl_days": TTL_DAYS,
        "views": {view: dict(VIEWS[view]) for view in VIEWS},
        "files": {name: path.name for name, path in files.items()},
        "rows": rows,
        "generated_with": {"numpy": np.__version__, "pyarrow": pa.__version__},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_table(directory: Path, name: str) -> pa.Table:
    return pq.read_table(table_files(directory)[name])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the feature store benchmark's data.")
    parser.add_argument("directory", type=Path)
    defaults = DataSpec()
    for field in dataclasses.fields(DataSpec):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
        )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = vars(parser.parse_args(argv))
    directory, force = args.pop("directory"), args.pop("force")
    manifest = write_dataset(DataSpec(**args), directory, force=force)
    json.dump(manifest["rows"], sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
