"""How one process of a pod combines its siblings' slots (``libs.runtime.pod_health``),
and the slots' round trip through a real shared file."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.runtime.pod_health import (
    STARTING,
    PodHealthFile,
    Slot,
    create_pod_health_file,
    sibling_health,
)

NOW = 1_000.0
FRESH, GRACE = 3.0, 15.0


def _health(*slots: Slot, own: int = 0) -> tuple[str | None, str | None]:
    health = sibling_health(slots, own, NOW, fresh_within_s=FRESH, live_grace_s=GRACE)
    return health.not_ready_because, health.not_live_because


def _fine(age_s: float = 0.5) -> Slot:
    return Slot(heartbeat=NOW - age_s, ready=True, live=True)


def test_every_sibling_ready_and_fresh_is_ready_and_live() -> None:
    assert _health(_fine(), _fine(), _fine(2.9)) == (None, None)


def test_one_process_alone_has_no_siblings_to_wait_for() -> None:
    assert _health(Slot(heartbeat=NOW - 100, ready=False, live=False)) == (None, None)


def test_the_own_slot_is_left_out_whatever_it_says() -> None:
    stale_self = Slot(heartbeat=NOW - 100, ready=False, live=False)
    assert _health(_fine(), stale_self, own=1) == (None, None)


def test_a_sibling_still_loading_makes_the_pod_not_ready_but_not_dead() -> None:
    loading = Slot(heartbeat=NOW - 0.5, ready=False, live=True)
    assert _health(_fine(), loading) == ("process 1 is not ready", None)


def test_a_sibling_that_has_not_beaten_yet_is_starting_not_wedged() -> None:
    assert _health(_fine(), STARTING) == ("process 1 is starting", None)


def test_a_sibling_that_says_it_is_not_live_makes_the_pod_not_live() -> None:
    stuck = Slot(heartbeat=NOW - 0.5, ready=True, live=False)
    assert _health(_fine(), stuck) == (None, "process 1 reports it is not live")


def test_a_heartbeat_older_than_fresh_is_not_ready_but_still_live() -> None:
    slow = _fine(age_s=FRESH + 0.1)
    assert _health(_fine(), slow) == ("process 1 has not reported for 3.1 s", None)


def test_a_heartbeat_older_than_the_grace_is_a_wedged_process() -> None:
    wedged = _fine(age_s=GRACE + 5)
    not_ready, not_live = _health(_fine(), wedged)
    assert not_ready == "process 1 has not reported for 20.0 s"
    assert not_live == "process 1 has not reported for 20 s (wedged?)"


def test_every_failing_sibling_is_named() -> None:
    loading = Slot(heartbeat=NOW, ready=False, live=True)
    stuck = Slot(heartbeat=NOW, ready=True, live=False)
    not_ready, not_live = _health(_fine(), loading, stuck, loading)
    assert not_ready == "process 1 is not ready; process 3 is not ready"
    assert not_live == "process 2 reports it is not live"


def test_slots_round_trip_through_two_maps_of_one_file() -> None:
    path = create_pod_health_file(3)
    try:
        first, second = PodHealthFile(path), PodHealthFile(path)
        assert first.processes == 3
        assert first.read() == [STARTING] * 3  # nobody has beaten yet
        first.write(0, Slot(12.5, ready=True, live=True))
        second.write(2, Slot(13.0, ready=False, live=False))
        assert second.read() == [
            Slot(12.5, ready=True, live=True),
            STARTING,
            Slot(13.0, ready=False, live=False),
        ]
        first.close()
        second.close()
    finally:
        path.unlink()


def test_a_file_that_is_not_a_whole_number_of_slots_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "health"
    path.write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match="is not a pod health file"):
        PodHealthFile(path)
