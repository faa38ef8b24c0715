"""Ready reply entries equal replies built value by value, and never outlive their rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from services.feature_store.app.online import vectors as serving_vectors
from services.feature_store.app.online.vectors import VectorIndex, VectorIndexes
from services.feature_store.domain.serving.rows import ServingRow, StoredView, ViewTables, epoch_us

T = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
PRESENT, NOT_FOUND, EXPIRED = (
    m.FEATURE_STATUS_PRESENT,
    m.FEATURE_STATUS_NOT_FOUND,
    m.FEATURE_STATUS_EXPIRED,
)
SCORES = StoredView.of(("scores", 1), features=2, ttl_s=3600)
"""Two features, one hour TTL."""
PROFILE = StoredView.of(("profile", 1), features=1, ttl_s=0)
"""One feature, never expires."""
SHAPE = (SCORES, PROFILE)


def _row(values: list[float], event_time: datetime) -> ServingRow:
    encoded = m.FeatureRow(values=[m.Value(float64_value=v) for v in values]).SerializeToString()
    return ServingRow(encoded, event_time, len(values))


def _tables() -> ViewTables:
    return {
        ("scores", 1): {
            "fresh": _row([1.0, 2.0], T - timedelta(minutes=10)),
            "stale": _row([3.0, 4.0], T - 2 * HOUR),
            "old_row": _row([5.0], T - timedelta(minutes=5)),  # stored before "b" was added
        },
        ("profile", 1): {
            "fresh": _row([7.0], T - 30 * HOUR),
            "only_profile": _row([8.0], T - HOUR),
        },
    }


def _expected(
    cells: list[tuple[float | None, int, datetime | None]],
) -> rr.FeatureVector:
    """One entity's FeatureVector built with the protobuf library: (value, status, time)."""
    vector = rr.FeatureVector()
    for value, status, event_time in cells:
        vector.values.append(m.Value() if value is None else m.Value(float64_value=value))
        vector.statuses.append(status)
        stamp = Timestamp()
        if event_time is not None:
            stamp.FromDatetime(event_time)
        vector.event_times.append(stamp)
    return vector


def _read(index: VectorIndex, key: str, tables: ViewTables, now: datetime) -> bytes:
    [entry] = index.results([key], tables, now)
    return entry


def _parsed(entry: bytes) -> rr.FeatureVector:
    return rr.FeatureVector.FromString(entry)


def test_entries_hold_values_statuses_and_event_times_of_every_case() -> None:
    tables, index = _tables(), VectorIndex(SHAPE, capacity=100)
    fresh, stale, partial = T - timedelta(minutes=10), T - 2 * HOUR, T - timedelta(minutes=5)

    assert _parsed(_read(index, "fresh", tables, T)) == _expected(
        [(1.0, PRESENT, fresh), (2.0, PRESENT, fresh), (7.0, PRESENT, T - 30 * HOUR)]
    )
    assert _parsed(_read(index, "stale", tables, T)) == _expected(
        [(None, EXPIRED, stale), (None, EXPIRED, stale), (None, NOT_FOUND, None)]
    )
    assert _parsed(_read(index, "old_row", tables, T)) == _expected(
        [(5.0, PRESENT, partial), (None, NOT_FOUND, partial), (None, NOT_FOUND, None)]
    )
    assert _parsed(_read(index, "only_profile", tables, T)) == _expected(
        [(None, NOT_FOUND, None), (None, NOT_FOUND, None), (8.0, PRESENT, T - HOUR)]
    )
    assert _parsed(_read(index, "unknown", tables, T)) == _expected([(None, NOT_FOUND, None)] * 3)
    assert set(index.entries) == {"fresh", "stale", "old_row", "only_profile"}


def test_an_entry_is_not_served_past_the_moment_its_first_value_expires() -> None:
    tables, index = _tables(), VectorIndex(SHAPE, capacity=100)
    expires = T - timedelta(minutes=10) + HOUR  # "fresh" scores: event time + TTL
    kept = _read(index, "fresh", tables, T)

    assert _read(index, "fresh", tables, expires) == kept  # at the TTL exactly: still fresh
    later = _parsed(_read(index, "fresh", tables, expires + timedelta(microseconds=1)))
    assert list(later.statuses) == [EXPIRED, EXPIRED, PRESENT]


async def test_a_changed_row_drops_its_entries_and_the_next_read_sees_it() -> None:
    tables = _tables()
    indexes = VectorIndexes(lambda: tables, max_entries=100)
    index = indexes.index_for(SHAPE)
    assert index is not None
    before = _parsed(_read(index, "fresh", tables, T))
    assert before.values[2].float64_value == 7.0

    tables[("profile", 1)]["fresh"] = _row([9.0], T - timedelta(minutes=1))
    indexes.invalidate(("profile", 1), "fresh")

    assert "fresh" not in index.entries
    after = _parsed(_read(index, "fresh", tables, T))
    assert after.values[2].float64_value == 9.0


async def test_a_new_index_fills_in_the_background() -> None:
    tables = _tables()
    indexes = VectorIndexes(lambda: tables, max_entries=100)
    index = indexes.index_for(SHAPE)
    assert index is not None and not index.filled

    for _ in range(100):
        if index.filled:
            break
        await asyncio.sleep(0.01)

    assert index.filled
    assert set(index.entries) == {"fresh", "stale", "old_row", "only_profile"}
    assert indexes.index_for(SHAPE) is index


async def test_indexes_stay_within_their_entry_limit() -> None:
    tables = _tables()  # scores: 3 entities, profile: 2 (4 in all)
    indexes = VectorIndexes(lambda: tables, max_entries=8)
    first = indexes.index_for((PROFILE, SCORES))
    assert first is not None and first.capacity == 8
    await asyncio.sleep(0.05)
    assert len(first.entries) == 4

    # No room beside an index in use: read view by view rather than evict it.
    assert indexes.index_for((SCORES,)) is None
    first.last_used -= 61  # unused for a minute: it makes way
    indexes._retry_at.clear()
    second = indexes.index_for((SCORES,))
    assert second is not None and first.entries == {}

    tight = VectorIndexes(lambda: tables, max_entries=3)
    index = tight.index_for((PROFILE, SCORES))
    assert index is not None
    await asyncio.sleep(0.05)
    assert len(index.entries) == 3  # the fourth entity is built per read, not kept
    assert len(index.results(["fresh", "stale", "old_row", "only_profile"], tables, T)) == 4
    assert len(index.entries) == 3

    too_small = VectorIndexes(lambda: tables, max_entries=2)
    assert too_small.index_for((SCORES,)) is None  # 3 entities: read view by view instead


async def test_a_full_index_grows_as_its_views_gain_entities(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serving_vectors, "_MIN_CAPACITY", 1)
    tables: ViewTables = {("profile", 1): {"a": _row([1.0], T), "b": _row([2.0], T)}}
    indexes = VectorIndexes(lambda: tables, max_entries=100)
    index = indexes.index_for((PROFILE,))
    assert index is not None and index.capacity == 2
    for key in "cdefg":
        tables[("profile", 1)][key] = _row([3.0], T)
    index.results(list("abcdefg"), tables, T)
    assert len(index.entries) == 2  # full

    assert indexes.index_for((PROFILE,)) is index
    await asyncio.sleep(0.05)
    assert index.capacity == 8 and len(index.entries) == 7


def test_a_ttl_shorter_than_a_microsecond_still_expires_values() -> None:
    view = StoredView.of(("scores", 1), features=2, ttl_s=1e-7)
    row = _row([1.0, 2.0], T)
    assert view.ttl_us == 0
    assert not view.expired(row, epoch_us(T)) and view.expired(row, epoch_us(T) + 1)
    assert StoredView.of(("scores", 1), features=2, ttl_s=0).ttl_us is None


async def test_no_index_while_the_replica_is_off() -> None:
    indexes = VectorIndexes(lambda: None, max_entries=100)
    assert indexes.index_for(SHAPE) is None
