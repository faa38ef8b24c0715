"""Value types of the event store: what is appended and what is read back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from libs.errors import Conflict

ANY_VERSION = -1
"""Expected version that accepts whatever the stream's current version is."""
NO_STREAM = 0
"""Expected version of a stream that must not exist yet."""


@dataclass(frozen=True)
class EventMetadata:
    """Why and by whom an event was recorded; travels with it to every consumer."""

    correlation_id: str = ""
    """Shared by every event of one business operation (e.g. one request)."""
    causation_id: str = ""
    """The id of the event or request that directly caused this one."""
    actor: str = ""
    """Who did it: the authenticated caller or the service itself."""
    traceparent: str = ""
    """W3C trace context of the operation, so consumers continue its trace."""


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended. Build one with ``EventCatalog.new_event``."""

    event_id: UUID
    """Time-ordered (UUIDv7); also the broker-side dedupe key (Nats-Msg-Id)."""
    event_type: str
    """Full protobuf message name, e.g. ``lathe.model_registry.v1.ModelCreated``."""
    schema_version: int
    payload: bytes
    """The serialized protobuf message."""
    subject_tail: str
    """``<aggregate>.<event>``; published under ``<namespace>.<service>.<subject_tail>``."""
    metadata: EventMetadata = field(default_factory=EventMetadata)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: a ``NewEvent`` plus where and when it landed."""

    global_position: int
    stream_id: str
    stream_version: int
    event_id: UUID
    event_type: str
    schema_version: int
    payload: bytes
    subject_tail: str
    metadata: EventMetadata
    recorded_at: datetime


@dataclass(frozen=True)
class AppendResult:
    """What an append recorded."""

    events: tuple[RecordedEvent, ...]
    """The appended events as stored, in stream-version order."""

    @property
    def stream_version(self) -> int:
        """The stream's version after the append (its last event's version)."""
        return self.events[-1].stream_version

    @property
    def positions(self) -> tuple[int, ...]:
        """Global positions of the appended events, in order."""
        return tuple(event.global_position for event in self.events)


class WrongExpectedVersion(Conflict):
    """An append's expected stream version did not match; nothing was written."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        expected_text = "no stream" if expected == NO_STREAM else f"version {expected}"
        actual_text = "does not exist" if actual == NO_STREAM else f"is at version {actual}"
        super().__init__(
            f"stream {stream_id!r} {actual_text} but the append expected {expected_text}; "
            "another writer changed it first: re-read the current state and retry"
        )
