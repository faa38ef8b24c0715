"""Which protobuf messages a service records as events, and how they are routed.

The catalog is the single place that says: this message type is event
``<aggregate>.<event>`` at schema version N. Writers use it to build
``NewEvent``s, the relay to name subjects, consumers to decode payloads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message
from uuid6 import uuid7

from libs.eventstore.model import EventMetadata, NewEvent

_TOKEN_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class EventSpec:
    """One event type of a service."""

    message: type[Message]
    aggregate: str
    """Subject token naming the aggregate, e.g. ``model``."""
    name: str
    """Subject token naming what happened, e.g. ``created``."""
    schema_version: int = 1

    def __post_init__(self) -> None:
        for token in (self.aggregate, self.name):
            if not _TOKEN_RE.fullmatch(token):
                raise ValueError(f"event subject token {token!r} must match {_TOKEN_RE.pattern}")

    @property
    def event_type(self) -> str:
        return self.message.DESCRIPTOR.full_name

    @property
    def subject_tail(self) -> str:
        return f"{self.aggregate}.{self.name}"


class UnknownEventType(LookupError):
    """A payload's type is not in this catalog (e.g. written by a newer release)."""


class EventCatalog:
    """Immutable lookup from message type to ``EventSpec`` and back."""

    def __init__(self, specs: Iterable[EventSpec]) -> None:
        self._by_type: dict[str, EventSpec] = {}
        for spec in specs:
            if spec.event_type in self._by_type:
                raise ValueError(f"event type {spec.event_type} is registered twice")
            self._by_type[spec.event_type] = spec

    def __contains__(self, event_type: str) -> bool:
        return event_type in self._by_type

    @property
    def specs(self) -> tuple[EventSpec, ...]:
        return tuple(self._by_type.values())

    def spec(self, event_type: str) -> EventSpec:
        try:
            return self._by_type[event_type]
        except KeyError:
            raise UnknownEventType(
                f"event type {event_type!r} is not in this service's catalog; "
                "register an EventSpec for it or upgrade the reader"
            ) from None

    def new_event(self, message: Message, metadata: EventMetadata | None = None) -> NewEvent:
        """Wrap ``message`` as an event with a fresh time-ordered id."""
        spec = self.spec(message.DESCRIPTOR.full_name)
        return NewEvent(
            event_id=uuid7(),
            event_type=spec.event_type,
            schema_version=spec.schema_version,
            payload=message.SerializeToString(deterministic=True),
            subject_tail=spec.subject_tail,
            metadata=metadata or EventMetadata(),
        )

    def decode(self, event_type: str, payload: bytes) -> Message:
        """Parse ``payload`` as the message named by ``event_type``."""
        message = self.spec(event_type).message()
        try:
            message.ParseFromString(payload)
        except DecodeError as exc:
            raise ValueError(f"payload of {event_type} is not a valid protobuf: {exc}") from exc
        return message
