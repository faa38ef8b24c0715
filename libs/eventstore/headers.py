"""The NATS headers on every relayed Lathe event: the contract for subscribers.

A downstream team reads ``Lathe-Event-Type`` to pick the protobuf message that
decodes the payload, uses ``Nats-Msg-Id`` (the event id) to deduplicate, and
continues the producer's trace from ``traceparent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from libs.eventstore.model import EventMetadata, RecordedEvent

MSG_ID = "Nats-Msg-Id"
EVENT_TYPE = "Lathe-Event-Type"
SCHEMA_VERSION = "Lathe-Schema-Version"
STREAM_ID = "Lathe-Stream-Id"
STREAM_VERSION = "Lathe-Stream-Version"
POSITION = "Lathe-Position"
RECORDED_AT = "Lathe-Recorded-At"
CORRELATION_ID = "Lathe-Correlation-Id"
CAUSATION_ID = "Lathe-Causation-Id"
ACTOR = "Lathe-Actor"
TRACEPARENT = "traceparent"


@dataclass(frozen=True)
class EventHeaders:
    """Encodes a recorded event's envelope as headers and decodes it back."""

    @staticmethod
    def encode(event: RecordedEvent, *, traceparent: str) -> dict[str, str]:
        headers = {
            MSG_ID: str(event.event_id),
            EVENT_TYPE: event.event_type,
            SCHEMA_VERSION: str(event.schema_version),
            STREAM_ID: event.stream_id,
            STREAM_VERSION: str(event.stream_version),
            POSITION: str(event.global_position),
            RECORDED_AT: event.recorded_at.isoformat(),
            CORRELATION_ID: event.metadata.correlation_id,
            CAUSATION_ID: event.metadata.causation_id,
            ACTOR: event.metadata.actor,
        }
        if traceparent:
            headers[TRACEPARENT] = traceparent
        return headers

    @staticmethod
    def decode(headers: dict[str, str], payload: bytes, subject: str) -> RecordedEvent:
        """Rebuild the envelope; raises ValueError naming a missing or bad header."""
        try:
            return RecordedEvent(
                global_position=int(headers[POSITION]),
                stream_id=headers[STREAM_ID],
                stream_version=int(headers[STREAM_VERSION]),
                event_id=UUID(headers[MSG_ID]),
                event_type=headers[EVENT_TYPE],
                schema_version=int(headers[SCHEMA_VERSION]),
                payload=payload,
                subject_tail=subject.split(".", 2)[-1],
                metadata=EventMetadata(
                    correlation_id=headers.get(CORRELATION_ID, ""),
                    causation_id=headers.get(CAUSATION_ID, ""),
                    actor=headers.get(ACTOR, ""),
                    traceparent=headers.get(TRACEPARENT, ""),
                ),
                recorded_at=datetime.fromisoformat(headers[RECORDED_AT]),
            )
        except KeyError as exc:
            raise ValueError(f"message on {subject} lacks the Lathe header {exc.args[0]}") from exc
        except ValueError as exc:
            raise ValueError(f"message on {subject} has a malformed Lathe header: {exc}") from exc
