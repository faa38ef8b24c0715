"""Canary hashing, log sampling and the deployment state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m
from services.inference.domain import deployment as d
from services.inference.domain.routing import (
    canary_bucket,
    goes_to_canary,
    sampled,
    sampled_rows,
)


def _keys(loan: str) -> dict[str, fs.Value]:
    return {"loan_id": fs.Value(string_value=loan)}


def test_canary_assignment_is_sticky_and_close_to_its_share() -> None:
    loans = [f"L{i}" for i in range(20_000)]
    first = [goes_to_canary("credit", _keys(x), 0.1) for x in loans]
    assert first == [goes_to_canary("credit", _keys(x), 0.1) for x in loans]
    share = sum(first) / len(loans)
    assert abs(share - 0.1) < 4 * (0.1 * 0.9 / len(loans)) ** 0.5
    # Raising the share only moves entities to the canary, never back.
    wider = [goes_to_canary("credit", _keys(x), 0.3) for x in loans]
    assert all(w for f, w in zip(first, wider, strict=True) if f)
    assert not any(goes_to_canary("credit", _keys(x), 0.0) for x in loans[:100])


def test_canary_hash_is_typed_and_salted_by_model() -> None:
    assert canary_bucket("m", {"k": fs.Value(string_value="1")}) != canary_bucket(
        "m", {"k": fs.Value(int64_value=1)}
    )
    assert canary_bucket("a", _keys("L1")) != canary_bucket("b", _keys("L1"))


def test_sampling_depends_on_the_decision_id_only() -> None:
    ids = [f"d{i}" for i in range(20_000)]
    picked = [sampled(i, 0.05) for i in ids]
    assert picked == [sampled(i, 0.05) for i in ids]
    assert abs(sum(picked) / len(ids) - 0.05) < 4 * (0.05 * 0.95 / len(ids)) ** 0.5
    assert all(sampled(i, 1.0) for i in ids[:10]) and not any(sampled(i, 0.0) for i in ids[:10])
    for rate in (0.0, 0.05, 0.5, 1.0):  # the batched form picks exactly the same rows
        assert sampled_rows(ids, rate) == [k for k, i in enumerate(ids) if sampled(i, rate)]


T = datetime(2026, 5, 1, tzinfo=UTC)


def _news(version: int, at: datetime, share: float = 0.0) -> d.AliasNews:
    return d.AliasNews("credit", "production", version, share, at, "alias_event")


def _fold(state: d.Deployment, messages: list) -> d.Deployment:  # type: ignore[type-arg]
    for message in messages:
        state = d.evolve(state, message, state.stream_version + 1, T)
    return state


def test_news_is_recorded_once_and_old_news_is_ignored() -> None:
    state = _fold(
        d.Deployment("credit", "production"),
        d.decide_news(d.Deployment("credit", "production"), _news(1, T)),
    )
    assert state.requested_version == 1 and state.request_revision == 1
    assert d.decide_news(state, _news(1, T)) == []  # a redelivery
    newer = d.decide_news(state, _news(2, T + timedelta(seconds=1)))
    assert [type(e) for e in newer] == [ev.DeploymentRequested]
    state = _fold(state, newer)
    assert d.decide_news(state, _news(1, T + timedelta(milliseconds=500))) == []  # older move
    removed = d.decide_news(state, _news(0, T + timedelta(seconds=2)))
    assert [type(e) for e in removed] == [ev.DeploymentRemoved]
    assert _fold(state, removed).state == m.DEPLOYMENT_STATE_REMOVED


def test_outcomes_count_only_for_the_current_request() -> None:
    start = d.Deployment("credit", "production")
    state = _fold(start, d.decide_news(start, _news(3, T)))
    activated = ev.DeploymentActivated(model_name="credit", alias="production", version=3)
    assert d.decide_outcome(state, state.request_revision, activated) == [activated]
    done = _fold(state, [activated])
    assert done.state == m.DEPLOYMENT_STATE_SERVING and done.serving_version == 3
    assert d.decide_outcome(done, state.request_revision, activated) == []  # another replica
    moved = _fold(done, d.decide_news(done, _news(4, T + timedelta(seconds=1))))
    failed = ev.DeploymentFailed(model_name="credit", alias="production", version=3, stage="parity")
    assert d.decide_outcome(moved, state.request_revision, failed) == []  # stale request
    late = ev.DeploymentFailed(model_name="credit", alias="production", version=4, stage="verify")
    after = _fold(moved, d.decide_outcome(moved, moved.request_revision, late))
    assert after.state == m.DEPLOYMENT_STATE_FAILED and after.serving_version == 3
