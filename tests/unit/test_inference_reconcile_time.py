"""A deletion found at reconciliation is stamped on the registry's clock, not this host's.

Alias times order the news (``decide_news``); every one is the registry's Postgres commit
time. A deletion stamped with an inference host's clock running ahead made the next
AliasSet, committed by the registry before that clock's "now", old news forever.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.inference.app.follower import _after
from services.inference.domain.deployment import AliasNews, Deployment, decide_news, evolve

SET_AT = datetime(2026, 1, 1, tzinfo=UTC)  # the registry's time of the last move we know


def _apply(state: Deployment, news: AliasNews) -> Deployment:
    for message in decide_news(state, news):
        state = evolve(state, message, state.stream_version + 1, news.alias_time)
    return state


def _requested(version: int, at: datetime) -> Deployment:
    return _apply(
        Deployment("credit", "production"),
        AliasNews("credit", "production", version, 0.0, at, "alias_event"),
    )


def test_a_reconciled_deletion_is_one_microsecond_after_the_last_known_move() -> None:
    assert _after(SET_AT) == SET_AT + timedelta(microseconds=1)


def test_a_later_alias_set_after_a_reconciled_deletion_is_recorded() -> None:
    state = _requested(1, SET_AT)
    deleted = _apply(
        state, AliasNews("credit", "production", 0, 0.0, _after(state.alias_time), "reconcile")
    )
    assert deleted.removed
    # The registry sets the alias again a millisecond later (by its clock; this host's
    # may run minutes ahead, which no longer matters).
    later = AliasNews(
        "credit", "production", 2, 0.0, SET_AT + timedelta(milliseconds=1), "alias_event"
    )
    again = _apply(deleted, later)
    assert not again.removed and again.requested_version == 2


def test_with_no_known_time_the_deletion_ranks_before_any_registry_time() -> None:
    assert _after(None) < SET_AT
    state = Deployment(
        "credit", "production", stream_version=1, request_revision=1, requested_version=1
    )
    deleted = _apply(state, AliasNews("credit", "production", 0, 0.0, _after(None), "reconcile"))
    assert deleted.removed
    assert decide_news(deleted, AliasNews("credit", "production", 2, 0.0, SET_AT, "alias_event"))
