"""The DuckDB point-in-time joins of ``bench/duckdb_asof.py`` give the right answers.

Run with the Lathe environment: ``.venv/bin/python -m pytest bench/feast_baseline -q``
(bench/ is outside pyproject's testpaths, so ``make test`` does not run these).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

duckdb = pytest.importorskip("duckdb")
pa = pytest.importorskip("pyarrow")

from bench.duckdb_asof import (  # noqa: E402
    LabelSpec,
    ViewSpec,
    asof_pit_join,
    bitemporal_join_sql,
    bitemporal_pit_join,
    build_timelines,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
METHODS = ["running_argmax", "record_setters"]


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def _table(rows: list[tuple], names: list[str]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in names]
    types = {
        "loan_id": pa.string(),
        "event_time": pa.timestamp("us", tz="UTC"),
        "created_time": pa.timestamp("us", tz="UTC"),
    }
    return pa.table(
        {
            name: pa.array(list(col), type=types.get(name))
            for name, col in zip(names, columns, strict=True)
        }
    )


@pytest.fixture
def conn() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(":memory:")
    yield connection
    connection.close()


def _register(conn: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    conn.register(f"{name}_arrow", table)
    conn.execute(f'CREATE TABLE "{name}" AS SELECT * FROM "{name}_arrow"')
    conn.unregister(f"{name}_arrow")


def _by_label(result: pa.Table, key: str = "label_id") -> dict[int, dict[str, object]]:
    rows = result.to_pylist()
    assert len({row[key] for row in rows}) == len(rows), "a label row appears twice"
    return {row[key]: row for row in rows}


# --- the hand-built case -----------------------------------------------------------------

# One view ``terms`` (TTL 30 days) with a single feature ``rate``.
#   A: r1 event d1 / created d1 = 1.0; r2 event d5 / created d5 = 2.0;
#      a late correction of r2: event d5 / created d20 = 2.5;
#      a late arrival: event d8 / created d30 = 3.0; event d40 / created d40 = 4.0.
#   C: event d10 / created d10 = 10.0; a late arrival with an *older* event time:
#      event d2 / created d12 = 99.0 (must never win); two rows becoming visible at the
#      same instant d15: event d15 / created d15 = 15.0 and event d14 / created d15 = 14.0.
#   B: no rows.
# A second view ``score`` (no TTL) checks several views and the no-TTL path.
TERMS = [
    ("A", day(1), day(1), 1.0),
    ("A", day(5), day(5), 2.0),
    ("A", day(5), day(20), 2.5),
    ("A", day(8), day(30), 3.0),
    ("A", day(40), day(40), 4.0),
    ("C", day(10), day(10), 10.0),
    ("C", day(2), day(12), 99.0),
    ("C", day(14), day(15), 14.0),
    ("C", day(15), day(15), 15.0),
]
SCORE = [
    ("A", day(0), day(3), 7),
    ("C", day(0), day(0), 8),
]
# (label_id, loan_id, label time, expected rate, expected score, why)
CASES = [
    (1, "A", day(0), None, None, "before any row"),
    (2, "A", day(1), 1.0, None, "row at exactly the label time counts; score created d3"),
    (3, "A", day(3), 1.0, 7, "score visible from its created_time d3"),
    (4, "A", day(6), 2.0, 7, "the d5 correction is not written until d20"),
    (5, "A", day(21), 2.5, 7, "correction now written: same event_time, later created"),
    (6, "A", day(25), 2.5, 7, "the d8 row is not written until d30"),
    (7, "A", day(31), 3.0, 7, "the late arrival is visible and has the latest event_time"),
    (8, "A", day(38), 3.0, 7, "event d8 is exactly 30 days old: still inside the TTL"),
    (9, "A", day(38.5), None, 7, "event d8 now older than the TTL; score has no TTL"),
    (10, "A", day(40), 4.0, 7, "new row"),
    (11, "B", day(20), None, None, "an entity without rows"),
    (12, "C", day(13), 10.0, 8, "the late arrival with an older event time never wins"),
    (13, "C", day(15), 15.0, 8, "two rows visible at the same instant: the later event wins"),
    (14, "C", day(14.5), 10.0, 8, "neither d15-visible row yet"),
]


@pytest.fixture
def hand_built(conn: duckdb.DuckDBPyConnection) -> list[ViewSpec]:
    names = ["loan_id", "event_time", "created_time"]
    _register(conn, "terms", _table(TERMS, [*names, "rate"]))
    _register(conn, "score", _table(SCORE, [*names, "score"]))
    labels = [(i, loan, t, 0) for i, loan, t, *_ in CASES]
    _register(conn, "labels", _table(labels, ["label_id", "loan_id", "event_time", "label"]))
    return [
        ViewSpec("terms", ("rate",), ttl=timedelta(days=30)),
        ViewSpec("score", ("score",), ttl=None),
    ]


@pytest.mark.parametrize("method", METHODS)
def test_bitemporal_hand_built(
    conn: duckdb.DuckDBPyConnection, hand_built: list[ViewSpec], method: str
) -> None:
    result = _by_label(bitemporal_pit_join(conn, "labels", hand_built, method=method))
    assert result.keys() == {case[0] for case in CASES}
    for label_id, loan, t, rate, score, why in CASES:
        row = result[label_id]
        assert (row["loan_id"], row["event_time"]) == (loan, t)
        assert (row["rate"], row["score"]) == (rate, score), why
    assert list(bitemporal_pit_join(conn, "labels", hand_built, method=method).column_names) == [
        "label_id",
        "loan_id",
        "event_time",
        "label",
        "rate",
        "score",
    ]


@pytest.mark.parametrize("method", METHODS)
def test_bitemporal_over_stored_timelines(
    conn: duckdb.DuckDBPyConnection, hand_built: list[ViewSpec], method: str
) -> None:
    timelines = build_timelines(conn, hand_built[:1], method=method)
    assert timelines == {"terms": "terms__timeline"}
    stored = _by_label(bitemporal_pit_join(conn, "labels", hand_built, timelines=timelines))
    inline = _by_label(bitemporal_pit_join(conn, "labels", hand_built))
    assert stored == inline
    assert [stored[case[0]]["rate"] for case in CASES] == [case[3] for case in CASES]


def test_full_feature_names(conn: duckdb.DuckDBPyConnection, hand_built: list[ViewSpec]) -> None:
    result = bitemporal_pit_join(conn, "labels", hand_built, full_feature_names=True)
    assert result.column_names[-2:] == ["terms__rate", "score__score"]


def test_plain_asof_is_not_bitemporal(
    conn: duckdb.DuckDBPyConnection, hand_built: list[ViewSpec]
) -> None:
    """What a join on event_time alone returns: future-written rows leak into labels."""
    result = _by_label(asof_pit_join(conn, "labels", hand_built))
    assert result[2]["score"] == 7  # score created d3 leaks into a label at d1
    assert result[6]["rate"] == 3.0  # the d8 row, written d30, leaks into a label at d25
    assert result[9]["rate"] == 3.0  # no TTL


def test_custom_label_columns(conn: duckdb.DuckDBPyConnection, hand_built: list[ViewSpec]) -> None:
    conn.execute(
        'CREATE TABLE spine AS SELECT label_id, loan_id AS loan, event_time AS "at" FROM labels'
    )
    labels = LabelSpec("spine", entity_key="loan", event_time="at")
    result = _by_label(bitemporal_pit_join(conn, labels, hand_built))
    assert [result[i]["rate"] for i in (4, 5, 9)] == [2.0, 2.5, None]


def test_rejects_odd_identifiers() -> None:
    with pytest.raises(ValueError, match="identifier"):
        ViewSpec('x"; DROP TABLE labels; --', ("f",))
    with pytest.raises(ValueError, match="identifier"):
        bitemporal_join_sql("labels; --", [ViewSpec("v", ("f",))])
    with pytest.raises(ValueError, match="share a feature"):
        bitemporal_join_sql("labels", [ViewSpec("v", ("f",)), ViewSpec("w", ("f",))])


# --- randomized, against a brute-force reference -----------------------------------------


def _reference(
    rows: list[tuple], labels: list[tuple], ttl: timedelta | None, *, bitemporal: bool
) -> dict[int, object]:
    """label_id -> value by the definition, one candidate at a time."""
    by_loan: dict[str, list[tuple]] = {}
    for row in rows:
        by_loan.setdefault(row[0], []).append(row)
    expected: dict[int, object] = {}
    for label_id, loan, t in labels:
        candidates = [
            r for r in by_loan.get(loan, []) if r[1] <= t and (r[2] <= t or not bitemporal)
        ]
        best = max(candidates, key=lambda r: (r[1], r[2]), default=None)
        fresh = best is not None and (ttl is None or best[1] >= t - ttl)
        expected[label_id] = best[3] if fresh else None
    return expected


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_bitemporal_matches_reference(
    conn: duckdb.DuckDBPyConnection, seed: int, method: str
) -> None:
    # Whole-hour times over a few weeks: many ties in event_time, in created_time and in
    # visible_at, late corrections and late arrivals.
    rng = random.Random(seed)
    loans = [f"L{i:07d}" for i in range(1, 41)]
    seen: set[tuple] = set()
    rows: list[tuple] = []
    for value in range(1500):
        loan = rng.choice(loans)
        event = day(rng.randrange(0, 30 * 24) / 24)
        lag = rng.choice([0, 0, 1, 2, 24, 24 * rng.randrange(1, 20)])
        created = event + timedelta(hours=lag)
        if (loan, event, created) not in seen:
            seen.add((loan, event, created))
            rows.append((loan, event, created, float(value)))
    labels = [
        (i, rng.choice([*loans, "L9999999"]), day(rng.randrange(-24, 40 * 24) / 24))
        for i in range(3000)
    ]
    names = ["loan_id", "event_time", "created_time", "value"]
    _register(conn, "feature", _table(rows, names))
    _register(conn, "labels", _table(labels, ["label_id", "loan_id", "event_time"]))
    for ttl in (timedelta(days=3), None):
        view = ViewSpec("feature", ("value",), ttl=ttl)
        result = _by_label(bitemporal_pit_join(conn, "labels", [view], method=method))
        got = {label_id: row["value"] for label_id, row in result.items()}
        assert got == _reference(rows, labels, ttl, bitemporal=True)


def test_plain_asof_matches_reference_without_ties(conn: duckdb.DuckDBPyConnection) -> None:
    rng = random.Random(7)
    rows = []
    for value, event_s in enumerate(rng.sample(range(10**6), 2000)):
        event = T0 + timedelta(seconds=event_s)
        created = event + timedelta(seconds=rng.randrange(0, 10**5))
        rows.append((f"L{value % 30:07d}", event, created, float(value)))
    labels = [
        (i, f"L{rng.randrange(31):07d}", T0 + timedelta(seconds=rng.randrange(10**6)))
        for i in range(2000)
    ]
    _register(conn, "feature", _table(rows, ["loan_id", "event_time", "created_time", "value"]))
    _register(conn, "labels", _table(labels, ["label_id", "loan_id", "event_time"]))
    result = _by_label(asof_pit_join(conn, "labels", [ViewSpec("feature", ("value",))]))
    got = {label_id: row["value"] for label_id, row in result.items()}
    assert got == _reference(rows, labels, None, bitemporal=False)
