"""Outcomes: any bytes parse to an outcome that fits where it is written, or to
MalformedOutcome; lateness and the reported CENSORED status agree; ListDecisions refuses
every bad input with INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument
from services.inference.api.servicer import InferenceServicer
from services.inference.app.decision_log import EPOCH, DecisionQuery
from services.inference.app.rewards import reward_stream
from services.inference.domain import rewards

GOOD = {
    "decision_id": "d-1",
    "reward": 1.5,
    "reward_time": "2026-01-01T00:10:00Z",
    "reward_definition": "margin",
    "reward_definition_version": 1,
}
_EXTREME_NUMBERS = [
    10**400, -(10**400), 2**31, 2**31 - 1, 2**63, -1, 0, 1.0, 2.5, 1e308, -1e308, True, None,
]  # fmt: skip
_EXTREME_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "x\r\nNats-Msg-Id: 1", "\t", "\x7f", "\x85", "é" * 600,
    "x" * 1024, "x" * 1025, "x" * 1_000_000, "2026-01-01T00:00:00", "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
    "2026-13-01T00:00:00Z", "Z", "🙂",
]  # fmt: skip
_VALUES: list[Any] = [*_EXTREME_NUMBERS, *_EXTREME_TEXT, [], {}, [1], {"a": 1}, [[[[]]]]]
_LITERALS = [
    b"1" * 5000, b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"[" * 100_000,
    b'{"a":' * 100_000, b'"\\ud800"', b'"\\u0000"', b"1" * 400, b"-0", b"1E-400",
]  # fmt: skip


def _check(data: bytes) -> None:
    """Parse either yields values every store and event takes, or says Malformed."""
    try:
        outcome = rewards.parse_outcome(data)
    except rewards.MalformedOutcome as exc:
        detail = str(exc)
        assert detail and len(detail) < 400 and "\x00" not in detail
        detail.encode("utf-8")  # a text column and a protobuf string take it
        refused = ev.RewardRefused(outcome_id="o", reason=rewards.MALFORMED, detail=detail)
        refused.SerializeToString()
        return
    for text, limit in (
        (outcome.decision_id, rewards.MAX_DECISION_ID_BYTES),
        (outcome.definition, rewards.MAX_DEFINITION_BYTES),
    ):
        assert 0 < len(text.encode("utf-8")) <= limit
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)
    assert 1 <= outcome.version <= 2**31 - 1
    assert type(outcome.reward) is float and math.isfinite(outcome.reward)
    assert outcome.reward_time.utcoffset() == timedelta(0)
    joined = ev.RewardJoined(
        decision_id=outcome.decision_id,
        reward_definition=outcome.definition,
        reward_definition_version=outcome.version,
        reward=outcome.reward,
    )
    joined.reward_time.FromDatetime(outcome.reward_time)
    joined.SerializeToString()
    ev.RewardRefused(
        decision_id=outcome.decision_id,
        reward_definition=outcome.definition,
        reward_definition_version=outcome.version,
    ).SerializeToString()
    assert (
        len(reward_stream("m" * 200, outcome.decision_id, outcome.definition, outcome.version))
        < 1400
    )
    decided = datetime(2026, 1, 1, tzinfo=UTC)
    for window in (1.0, 3600.0, 1e15):  # a window past the year 9999 must not overflow
        rewards.timing(outcome, decided, window)
        rewards.lateness(outcome, decided, window, decided, decided)


@pytest.mark.parametrize("field", sorted(GOOD))
@pytest.mark.parametrize("value", _VALUES, ids=lambda v: repr(v)[:30])
def test_every_extreme_field_value_parses_or_is_malformed(field: str, value: Any) -> None:
    _check(json.dumps({**GOOD, field: value}).encode())


@pytest.mark.parametrize("literal", _LITERALS, ids=lambda v: v[:12].decode())
def test_extreme_json_literals_parse_or_are_malformed(literal: bytes) -> None:
    _check(literal)
    for field in sorted(GOOD):
        document = json.dumps({**GOOD, field: "@"}).encode()
        _check(document.replace(b'"@"', literal))


def test_the_reviewers_payloads_are_malformed_with_a_reason() -> None:
    base = json.dumps(GOOD).encode()
    for data, words in [
        (base.replace(b"1.5", str(10**400).encode()), "finite number"),
        (base.replace(b"1.5", b"1" * 5000), "not JSON"),
        (base.replace(b"version\": 1", b"version\": 2147483648"), r"\[1, 2147483647\]"),
        (base.replace(b'"d-1"', b'"d\\u0000"'), "control character U\\+0000"),
        (base.replace(b'"margin"', b'"m\\r\\nX: y"'), "control character U\\+000D"),
        (base.replace(b'"d-1"', b'"\\ud800"'), "lone surrogate"),
        (base.replace(b'"d-1"', b'"' + b"x" * 2000 + b'"'), "at most 1024"),
        (b"[" * 100_000, "not JSON"),
        (base.replace(b"2026-01-01T00:10:00Z", b"0001-01-01T00:00:00+01:00"), "0001-9999"),
        (base.replace(b'"2026-01-01T00:10:00Z"', b"20260101"), "RFC 3339 string"),
    ]:  # fmt: skip
        with pytest.raises(rewards.MalformedOutcome, match=words):
            rewards.parse_outcome(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "decision_id": _json | st.sampled_from(_VALUES),
            "reward": _json | st.sampled_from(_VALUES),
            "reward_time": _json | st.sampled_from(_VALUES) | st.datetimes().map(str),
            "reward_definition": _json | st.sampled_from(_VALUES),
            "reward_definition_version": _json | st.sampled_from(_VALUES),
            "extra": _json,
        },
    )
)
def test_any_outcome_object_parses_in_range_or_is_malformed(document: dict[str, Any]) -> None:
    _check(json.dumps({**GOOD, **document}).encode())
    _check(json.dumps(document).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_in_range_or_are_malformed(data: bytes) -> None:
    _check(data)


def test_late_arrivals_do_not_join_and_timing_never_overflows() -> None:
    outcome = rewards.parse_outcome(json.dumps(GOOD).encode())
    decided = datetime(2026, 1, 1, tzinfo=UTC)
    window = 3600.0
    inside = decided + timedelta(minutes=30)
    closed = decided + timedelta(seconds=window)
    assert rewards.lateness(outcome, decided, window, inside, inside) is None
    grace = closed + timedelta(seconds=rewards.JOIN_GRACE_S)
    assert rewards.lateness(outcome, decided, window, closed, grace) is None
    late = rewards.lateness(outcome, decided, window, closed + timedelta(seconds=1), inside)
    assert late is not None and late[0] == rewards.ARRIVED_LATE
    assert "reached JetStream" in late[1] and "censored" in late[1]
    slow = rewards.lateness(outcome, decided, window, inside, grace + timedelta(seconds=1))
    assert slow is not None and slow[0] == rewards.ARRIVED_LATE and "handled" in slow[1]
    assert rewards.ARRIVED_LATE in rewards.REASONS
    # A window past the year 9999 (configuration allows it) neither joins late nor raises.
    assert rewards.timing(outcome, decided, 1e15) is None


@settings(max_examples=500, deadline=None)
@given(
    window=st.floats(0.001, 1e9),
    arrived=st.floats(-10.0, 2e9),
    handled_after=st.floats(0.0, 1e9),
    read=st.floats(-10.0, 2e9),
)
def test_a_decision_reported_censored_is_never_joined_after(
    window: float, arrived: float, handled_after: float, read: float
) -> None:
    """If a join is allowed when checked at ``handled``, no read up to its commit
    (``CENSOR_MARGIN_S`` later) reports the decision censored — and conversely a read
    that reports it censored comes after every join that could still be checked."""
    decided = datetime(2026, 1, 1, tzinfo=UTC)
    outcome = rewards.parse_outcome(json.dumps(GOOD).encode())
    at = decided + timedelta(seconds=arrived)
    handled = at + timedelta(seconds=handled_after)
    now = decided + timedelta(seconds=read)
    joins = rewards.lateness(outcome, decided, window, at, handled) is None
    if joins and now <= handled + timedelta(seconds=rewards.CENSOR_MARGIN_S):
        assert not rewards.censored(decided, window, now)


class _Log:
    def __init__(self) -> None:
        self.queries: list[DecisionQuery] = []

    async def page(self, query: DecisionQuery) -> rr.ListDecisionsResponse:
        self.queries.append(query)
        return rr.ListDecisionsResponse(next_page_token="9:d-9")


def _list(log: _Log, **fields: Any) -> rr.ListDecisionsResponse:
    request = rr.ListDecisionsRequest(
        **{
            "model_name": "line",
            "reward_definition": "margin",
            "reward_definition_version": 1,
            **fields,
        }
    )
    servicer = InferenceServicer(None, None, max_rows=1, decisions=log)  # type: ignore[arg-type]
    return asyncio.run(servicer.ListDecisions(request, None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"model_name": ""}, "model_name is required"),
        ({"model_name": "x" * 65}, "not a valid name"),
        ({"model_name": "Line"}, "not a valid name"),
        ({"model_name": "line\n"}, "not a valid name"),
        ({"reward_definition": ""}, "reward_definition must not be empty"),
        ({"reward_definition": "m" * 257}, "reward_definition is 257 bytes long"),
        ({"reward_definition": "m\r\nx"}, "control character U\\+000D"),
        ({"reward_definition_version": 0}, ">= 1"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": 10_001}, "page_size"),
        ({"page_token": "not a token"}, "not one this service gave"),
        ({"page_token": "-1:d"}, "not one this service gave"),
        ({"page_token": "1" * 400 + ":d"}, "not one this service gave"),
        ({"page_token": "\u00b2:d"}, "not one this service gave"),
        ({"page_token": "x" * 5000}, "not one this service gave"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_list_decisions_refuses_bad_input(fields: dict[str, Any], words: str) -> None:
    log = _Log()
    with pytest.raises(InvalidArgument, match=words):
        _list(log, **fields)
    assert not log.queries  # nothing reached the store


def test_list_decisions_reads_its_own_tokens() -> None:
    log = _Log()
    token = _list(log).next_page_token
    _list(log, page_token=token)
    _list(log, page_token="42:d-:\t7")
    assert log.queries[0].after == (EPOCH, "") and log.queries[0].end is None
    nine = EPOCH + timedelta(microseconds=9)
    assert log.queries[1].after == (nine, "d-9")  # where the first page said the next starts
    forty_two = EPOCH + timedelta(microseconds=42)
    assert log.queries[2].after == (forty_two, "d-:\t7")  # any id Decide logged


def test_reward_streams_of_different_decisions_never_meet() -> None:
    """The stream name is the key of a join: any separator may be inside its parts."""
    assert reward_stream("m", "a/b", "c", 1) != reward_stream("m", "a", "b/c", 1)
    assert reward_stream("m1", "d", "x", 1) != reward_stream("m", "1d", "x", 1)
    assert reward_stream("m", "d", "x@1", 2) != reward_stream("m", "d", "x", 12)
