"""A tiny event catalog for event-store tests, built from protobuf well-known types."""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from libs.eventstore import EventCatalog, EventMetadata, EventSpec, NewEvent

CATALOG = EventCatalog(
    [
        EventSpec(StringValue, aggregate="note", name="added"),
        EventSpec(Int64Value, aggregate="counter", name="incremented"),
    ]
)


def note(text: str, **metadata: str) -> NewEvent:
    return CATALOG.new_event(StringValue(value=text), EventMetadata(**metadata))


def increment(by: int) -> NewEvent:
    return CATALOG.new_event(Int64Value(value=by))
