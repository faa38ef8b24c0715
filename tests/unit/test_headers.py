"""The NATS header contract of relayed events (pure logic, no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from uuid import UUID

import pytest

from libs.eventstore import EventHeaders, EventMetadata, RecordedEvent
from libs.messaging import EventStreamNames

EVENT = RecordedEvent(
    global_position=42,
    stream_id="model-credit",
    stream_version=3,
    event_id=UUID("01a213fd-e63c-7199-ad72-ca02d954afa9"),
    event_type="lathe.model_registry.v1.ModelCreated",
    schema_version=1,
    payload=b"\x0a\x06credit",
    subject_tail="model.created",
    metadata=EventMetadata(correlation_id="req-1", causation_id="cmd-1", actor="alice"),
    recorded_at=datetime(2026, 11, 25, 18, 0, tzinfo=UTC),
)
TRACEPARENT = "00-224666cae1f9f95dee2294169e21fbd0-51f8663fd63a8734-01"


def test_headers_name_the_event_for_downstream_subscribers() -> None:
    headers = EventHeaders.encode(EVENT, traceparent=TRACEPARENT)

    assert headers["Nats-Msg-Id"] == "01a213fd-e63c-7199-ad72-ca02d954afa9"
    assert headers["Lathe-Event-Type"] == "lathe.model_registry.v1.ModelCreated"
    assert headers["Lathe-Position"] == "42"
    assert headers["traceparent"] == TRACEPARENT


def test_decode_restores_the_recorded_event() -> None:
    headers = EventHeaders.encode(EVENT, traceparent=TRACEPARENT)

    decoded = EventHeaders.decode(headers, EVENT.payload, "lathe.model_registry.model.created")

    expected = dataclasses.replace(
        EVENT, metadata=dataclasses.replace(EVENT.metadata, traceparent=TRACEPARENT)
    )
    assert decoded == expected


def test_missing_or_malformed_headers_are_named() -> None:
    headers = EventHeaders.encode(EVENT, traceparent="")
    del headers["Lathe-Stream-Id"]
    with pytest.raises(ValueError, match="Lathe-Stream-Id"):
        EventHeaders.decode(headers, b"", "lathe.x.y.z")

    headers = EventHeaders.encode(EVENT, traceparent="") | {"Lathe-Position": "forty-two"}
    with pytest.raises(ValueError, match="malformed"):
        EventHeaders.decode(headers, b"", "lathe.x.y.z")


def test_stream_names_follow_the_subject_convention() -> None:
    names = EventStreamNames("lathe", "model_registry")

    assert names.stream == "LATHE_MODEL_REGISTRY"
    assert names.all_subjects == "lathe.model_registry.>"
    assert names.subject("alias.set") == "lathe.model_registry.alias.set"
