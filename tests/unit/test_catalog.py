"""EventCatalog: specs, ids, encoding (pure logic, no I/O)."""

from __future__ import annotations

import pytest
from google.protobuf.wrappers_pb2 import BoolValue, StringValue

from libs.eventstore import EventCatalog, EventMetadata, EventSpec, UnknownEventType

CATALOG = EventCatalog([EventSpec(StringValue, aggregate="note", name="added", schema_version=2)])


def test_new_event_carries_type_subject_version_and_payload() -> None:
    metadata = EventMetadata(actor="alice")
    event = CATALOG.new_event(StringValue(value="hi"), metadata)

    assert event.event_type == "google.protobuf.StringValue"
    assert event.subject_tail == "note.added"
    assert event.schema_version == 2
    assert event.metadata is metadata
    assert StringValue.FromString(event.payload).value == "hi"


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [CATALOG.new_event(StringValue(value=str(i))).event_id for i in range(200)]

    assert len(set(ids)) == 200
    assert ids == sorted(ids)
    assert {i.version for i in ids} == {7}


def test_decode_round_trips_and_rejects_garbage() -> None:
    event = CATALOG.new_event(StringValue(value="x"))

    assert CATALOG.decode(event.event_type, event.payload) == StringValue(value="x")
    with pytest.raises(ValueError, match="not a valid protobuf"):
        CATALOG.decode(event.event_type, b"\xff\xff\xff")


def test_unknown_types_are_named_in_the_error() -> None:
    with pytest.raises(UnknownEventType, match="BoolValue"):
        CATALOG.new_event(BoolValue(value=True))
    assert "google.protobuf.BoolValue" not in CATALOG


@pytest.mark.parametrize(("aggregate", "name"), [("Note", "added"), ("note", "add-ed"), ("", "x")])
def test_subject_tokens_are_validated(aggregate: str, name: str) -> None:
    with pytest.raises(ValueError, match="subject token"):
        EventSpec(StringValue, aggregate=aggregate, name=name)


def test_a_type_cannot_be_registered_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        EventCatalog([EventSpec(StringValue, "a", "b"), EventSpec(StringValue, "c", "d")])
