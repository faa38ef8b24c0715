"""What a materialization run reads (domain/materialization.py) and instants at the ends of
the valid range (domain/times.py): every source row is read once, whatever the order of
runs, bounds, interruptions and re-runs."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import FailedPrecondition
from services.feature_store.domain.materialization import (
    Loaded,
    RunScope,
    advanced,
    finished,
    run_scope,
    unwritten,
)
from services.feature_store.domain.times import MAX_TIME, MIN_TIME, from_us, to_us, utc
from services.feature_store.domain.writes import IngestRow

T = datetime(2026, 12, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _in_scope(scope: RunScope, mark: datetime, event: datetime, _: int = 0) -> bool:
    """What store/sources.py's WHERE clause selects, in Python."""
    if mark > scope.known_until:
        return False
    if scope.event_until is not None and event > scope.event_until:
        return False
    if scope.read_through is None:
        return True
    return mark > scope.read_through or (
        scope.read_events is not None and event > scope.read_events
    )


def test_runs_read_every_known_row_once_whatever_their_bounds() -> None:
    """Random sources (rows landing over time, some with back-dated watermarks), random
    runs (event bounds that only grow, re-runs, runs cut off after a page): every row
    that is known, inside the last bound and not back-dated is read; none is written
    twice once the log comparison of re-checked pages is applied."""
    rng = random.Random(11)
    for _ in range(200):
        source: list[tuple[datetime, datetime, int]] = []  # (watermark, event time, id)
        written: list[tuple[datetime, datetime, int]] = []
        loaded: Loaded | None = None
        bound: datetime | None = T - 100 * MINUTE
        clock = T
        back_dated_since: datetime | None = None
        for _ in range(rng.randint(1, 6)):
            clock += rng.randint(1, 20) * MINUTE
            for _ in range(rng.randint(0, 5)):
                mark = clock - rng.randint(0, 30) * MINUTE
                if loaded is not None and mark <= loaded.through:
                    back_dated_since = min(back_dated_since or mark, mark)
                source.append((mark, clock + rng.randint(-90, 90) * MINUTE, len(source)))
            if bound is not None and rng.random() < 0.5:
                bound = None if rng.random() < 0.3 else bound + rng.randint(0, 60) * MINUTE
            start = back_dated_since if rng.random() < 0.7 else None
            scope = run_scope("v", loaded, now=clock, end_time=bound, start_time=start)
            page = sorted((row for row in source if _in_scope(scope, *row)), key=lambda r: r[0])
            cut = len(page) if rng.random() < 0.8 else rng.randint(0, len(page))
            marks = sorted({row[0] for row in page[:cut]})
            for mark in marks:  # pages end on whole watermarks
                rows = [row for row in page if row[0] == mark]
                if scope.recheck_through is not None and mark <= scope.recheck_through:
                    rows = [row for row in rows if row not in written]  # the log comparison
                written.extend(rows)
                loaded = advanced(loaded, scope, mark)
            if cut == len(page):
                loaded = finished(loaded, scope)
                if start is not None:
                    back_dated_since = None
        assert len(written) == len(set(written)), "a row was written twice"
        if loaded is not None and back_dated_since is None:
            expected = {
                row
                for row in source
                if row[0] <= loaded.through
                and (loaded.event_through is None or row[1] <= loaded.event_through)
            }
            assert expected <= set(written), "a row inside what is loaded was never read"


def test_an_end_time_may_not_narrow_what_was_loaded() -> None:
    loaded = Loaded(T, T + MINUTE)
    with pytest.raises(FailedPrecondition, match="end_time"):
        run_scope("v", loaded, now=T, end_time=T, start_time=None)
    with pytest.raises(FailedPrecondition, match="every event time"):
        run_scope("v", Loaded(T, None), now=T, end_time=T, start_time=None)
    assert run_scope("v", loaded, now=T, end_time=None, start_time=None).event_until is None


def test_a_rerun_reads_back_to_its_start_and_rechecks_what_was_loaded() -> None:
    scope = run_scope("v", Loaded(T, None), now=T + MINUTE, end_time=None, start_time=T - MINUTE)
    assert scope.read_through == T - MINUTE - timedelta(microseconds=1)
    assert scope.recheck_through == T
    later = run_scope("v", Loaded(T, None), now=T + MINUTE, end_time=None, start_time=T + MINUTE)
    assert later.read_through == T, "a start after what was loaded reads nothing less"


def test_rows_already_in_the_log_are_not_written_again() -> None:
    def row(key: str, value: float) -> IngestRow:
        return IngestRow(key, T, [m.Value(float64_value=value)], T - MINUTE)

    rows = [row("a", 1.0), row("a", 1.0), row("b", 2.0), row("c", 3.0)]
    logged = [("a", T, T - MINUTE, 1.0), ("b", T, T - MINUTE, 9.0)]
    assert unwritten(rows, logged) == [row("a", 1.0), row("b", 2.0), row("c", 3.0)]


def test_the_ends_of_the_valid_range_come_back_aware() -> None:
    # asyncpg decodes Postgres ±infinity (what it stores the two ends as) as naive values.
    assert utc(datetime.min) == MIN_TIME and utc(datetime.max) == MAX_TIME
    assert utc(datetime(2026, 1, 1)) == datetime(2026, 1, 1, tzinfo=UTC)
    assert from_us(to_us(MIN_TIME)) == MIN_TIME and from_us(to_us(MAX_TIME)) == MAX_TIME
    assert to_us(datetime.max) == to_us(MAX_TIME)
