"""Rows of the future online: a chain per entity answers what is true at the read time.

Pure logic (domain/serving/rows.py, domain/writes.py): the replica, the Postgres read path
and the ready entries all read chains through ``StoredView.part`` / ``ServingRow.at``.
A randomized check compares every chain with a brute-force oracle over the rows written.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from services.feature_store.app.online.vectors import VectorIndex
from services.feature_store.domain.serving.rows import (
    FOREVER_US,
    ServingRow,
    StoredView,
    epoch_us,
    merged,
)
from services.feature_store.domain.writes import IngestRow, online_rows

T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
T_US = epoch_us(T)
SECOND_US = 1_000_000
PRESENT, NOT_FOUND, EXPIRED = (
    m.FEATURE_STATUS_PRESENT,
    m.FEATURE_STATUS_NOT_FOUND,
    m.FEATURE_STATUS_EXPIRED,
)


def _row(value: float, event_us: int, created_us: int | None = None) -> ServingRow:
    encoded = m.FeatureRow(values=[m.Value(float64_value=value)]).SerializeToString()
    created = None if created_us is None else _at(created_us)
    return ServingRow(encoded, _at(event_us), 1, created)


def _at(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _value(row: ServingRow | None) -> float | None:
    return None if row is None else m.FeatureRow.FromString(row.row).values[0].float64_value


def _chain(*rows: ServingRow, now_us: int = T_US) -> ServingRow:
    head = None
    for row in rows:
        head = merged(head, row, now_us)
    assert head is not None
    return head


def test_a_row_of_the_future_neither_shows_nor_masks_the_current_one() -> None:
    head = _chain(_row(9.0, T_US + 30 * 86_400 * SECOND_US), _row(1.0, T_US - 3600 * SECOND_US))
    assert _value(head.at(T_US)) == 1.0
    assert _value(head.at(T_US + 30 * 86_400 * SECOND_US)) == 9.0


def test_only_rows_of_the_future_is_not_found_until_the_first_comes() -> None:
    view = StoredView.of(("v", 1), features=1, ttl_s=0)
    head = _chain(_row(2.0, T_US + 5 * SECOND_US), _row(3.0, T_US + 9 * SECOND_US))
    part, until = view.part(head, T_US)
    assert part == view.absent and until == T_US + 5 * SECOND_US - 1
    part, until = view.part(head, T_US + 5 * SECOND_US)
    assert _parsed(part).values[0].float64_value == 2.0 and until == T_US + 9 * SECOND_US - 1
    part, until = view.part(head, T_US + 9 * SECOND_US)
    assert _parsed(part).values[0].float64_value == 3.0 and until == FOREVER_US - 1


def test_a_row_of_the_future_expires_by_its_ttl_from_its_event_time() -> None:
    view = StoredView.of(("v", 1), features=1, ttl_s=4)
    head = _chain(_row(1.0, T_US - SECOND_US), _row(2.0, T_US + 2 * SECOND_US))
    statuses = {
        offset: list(_parsed(view.part(head, T_US + offset * SECOND_US)[0]).statuses)
        for offset in (0, 2, 6)
    }
    assert statuses == {0: [PRESENT], 2: [PRESENT], 6: [PRESENT]}
    assert list(_parsed(view.part(head, T_US + 6 * SECOND_US + 1)[0]).statuses) == [EXPIRED]
    # An expired current row ends when the next row comes, not never.
    stale = _chain(_row(1.0, T_US - 10 * SECOND_US), _row(2.0, T_US + 2 * SECOND_US))
    part, until = view.part(stale, T_US)
    assert list(_parsed(part).statuses) == [EXPIRED] and until == T_US + 2 * SECOND_US - 1


def test_ready_entries_are_rebuilt_when_a_row_of_the_future_comes() -> None:
    view = StoredView.of(("v", 1), features=1, ttl_s=0)
    tables = {("v", 1): {"L1": _chain(_row(1.0, T_US - SECOND_US), _row(2.0, T_US + SECOND_US))}}
    index = VectorIndex((view,), capacity=10)
    [before] = index.results(["L1"], tables, T)
    [after] = index.results(["L1"], tables, _at(T_US + SECOND_US))
    assert rr.FeatureVector.FromString(before).values[0].float64_value == 1.0
    assert rr.FeatureVector.FromString(after).values[0].float64_value == 2.0


def test_merging_keeps_the_latest_true_row_and_one_row_per_future_time() -> None:
    now = T_US
    head = _chain(
        _row(1.0, now - 10, created_us=now - 10),
        _row(2.0, now - 5, created_us=now - 20),  # later event wins over later known
        _row(3.0, now + 5, created_us=now - 30),
        _row(4.0, now + 5, created_us=now - 1),  # same future time, known later: wins
        _row(5.0, now + 9, created_us=now - 1),
        _row(6.0, now - 7, created_us=now),  # older event time: never the answer again
        now_us=now,
    )
    chain = []
    node: ServingRow | None = head
    while node is not None:
        chain.append((_value(node), node.event_us - now))
        node = node.later
    assert chain == [(2.0, -5), (4.0, 5), (5.0, 9)]
    # A row delivered again (the change feed may repeat one) changes nothing.
    again = merged(head, _row(3.0, now + 5, created_us=now - 30), now)
    assert _value(again.at(now + 5)) == 4.0


def test_chains_answer_what_a_brute_force_oracle_answers() -> None:
    rng = random.Random(7)
    for _ in range(300):
        written: list[tuple[int, int, float]] = []  # (event, created, value), in write order
        head: ServingRow | None = None
        clock = T_US
        for step in range(rng.randint(1, 8)):
            clock += rng.randint(0, 3) * SECOND_US
            event = clock + rng.randint(-4, 4) * SECOND_US
            created = clock
            written.append((event, created, float(step)))
            head = merged(head, _row(float(step), event, created), clock)
        assert head is not None
        for probe in range(clock - 6 * SECOND_US, clock + 8 * SECOND_US, SECOND_US // 2):
            if probe < clock:
                continue  # chains are read forward in time from their last merge
            visible = [(e, c, i, v) for i, (e, c, v) in enumerate(written) if e <= probe]
            want = max(visible)[3] if visible else None  # full ties: the last written
            assert _value(head.at(probe)) == want, (written, probe - clock)


def test_a_write_splits_rows_of_the_future_from_rows_already_true() -> None:
    def ingest(key: str, event: datetime, created: datetime | None = None) -> IngestRow:
        return IngestRow(key, event, [m.Value(float64_value=1.0)], created)

    rows = online_rows(
        [
            ingest("a", T - timedelta(hours=1)),
            ingest("a", T - timedelta(hours=2)),
            ingest("a", T + timedelta(days=1)),
            ingest("a", T + timedelta(days=1), T - timedelta(hours=3)),  # known earlier
            ingest("b", T + timedelta(seconds=1)),
            ingest("c", T),  # true from now: current
        ],
        T,
    )
    assert {k: r.event_time for k, r in rows.current.items()} == {
        "a": T - timedelta(hours=1),
        "c": T,
    }
    assert sorted((r.entity_key, r.event_time, r.created_time) for r in rows.pending) == [
        ("a", T + timedelta(days=1), None),
        ("b", T + timedelta(seconds=1), None),
    ]


def _parsed(part: bytes) -> rr.FeatureVector:
    return rr.FeatureVector.FromString(part)
