"""The events the event-store benchmarks append: realistic size, built ahead of time.

Payloads are 100-200 random bytes (the size of a typical Lathe domain event's
protobuf), wrapped in a well-known protobuf type so no service's protos are
needed. Events are built before the clock starts, for Lathe and baseline alike,
so neither side is charged for generating ids or payloads.
"""

from __future__ import annotations

import random
import uuid

from google.protobuf.wrappers_pb2 import BytesValue

from libs.eventstore import EventCatalog, EventMetadata, EventSpec, NewEvent

CATALOG = EventCatalog([EventSpec(BytesValue, aggregate="bench", name="recorded")])
EVENT_TYPE = CATALOG.specs[0].event_type
SUBJECT_TAIL = CATALOG.specs[0].subject_tail

# A sampled W3C trace context, as an append made inside a traced request carries.
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def new_event(rng: random.Random, *, min_bytes: int, max_bytes: int, traced: bool) -> NewEvent:
    """One event with a random payload and filled-in metadata columns."""
    payload = BytesValue(value=rng.randbytes(rng.randint(min_bytes, max_bytes)))
    metadata = EventMetadata(
        correlation_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        causation_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        actor="svc:bench",
        traceparent=TRACEPARENT if traced else "",
    )
    return CATALOG.new_event(payload, metadata)


def raw_row(stream_id: str, version: int, event: NewEvent) -> tuple[object, ...]:
    """The same event as a row of the baseline's plain table (see ``RAW_COLUMNS``)."""
    return (
        stream_id,
        version,
        event.event_id,
        event.event_type,
        event.schema_version,
        event.payload,
        event.subject_tail,
        event.metadata.correlation_id,
        event.metadata.causation_id,
        event.metadata.actor,
        event.metadata.traceparent,
    )


RAW_COLUMNS = (
    "stream_id, stream_version, event_id, event_type, schema_version, payload, subject_tail, "
    "correlation_id, causation_id, actor, traceparent"
)

RAW_TABLE_DDL = """
    CREATE TABLE {table} (
        global_position bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
        stream_id       text        NOT NULL,
        stream_version  bigint      NOT NULL,
        event_id        uuid        NOT NULL UNIQUE,
        event_type      text        NOT NULL,
        schema_version  integer     NOT NULL,
        payload         bytea       NOT NULL,
        subject_tail    text        NOT NULL,
        correlation_id  text        NOT NULL DEFAULT '',
        causation_id    text        NOT NULL DEFAULT '',
        actor           text        NOT NULL DEFAULT '',
        traceparent     text        NOT NULL DEFAULT '',
        recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
        UNIQUE (stream_id, stream_version)
    )"""
"""The baseline's table: the event store's columns, keys and indexes, nothing else.

No streams table, no NOTIFY trigger, no CHECK constraints: what a hand-written
"insert events into Postgres" would have, so the difference is Lathe's machinery.
"""
