"""Generated decision ids: UUIDv7 of the current millisecond, distinct within a call."""

from __future__ import annotations

import time
import uuid

from services.inference.domain.decision_ids import new_decision_ids


def test_decision_ids_are_distinct_uuid7_of_now() -> None:
    before = time.time_ns() // 1_000_000
    ids = new_decision_ids(1000)
    assert len(set(new_decision_ids(3))) == 3 and new_decision_ids(0) == []
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 1000
    for text in ids[:50]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the call's millisecond, not one per id


def test_many_ids_do_not_move_the_clock_ahead() -> None:
    for _ in range(5):
        new_decision_ids(256)
    (latest,) = new_decision_ids(1)
    assert uuid.UUID(latest).int >> 80 <= time.time_ns() // 1_000_000
