"""Lathe's event store: Postgres-persisted event streams relayed to JetStream.

- ``EventStore``: append with optimistic concurrency, read streams and the log.
- ``EventTailer``: follow the log in position order without skipping late commits.
- ``EventRelay``: the transactional outbox, publishing to JetStream exactly once.
- ``DurableConsumer``: JetStream consumers whose effects apply exactly once.
- ``Recorder``: append events and apply them to read models in one transaction.
- ``RequestLog`` / ``ClientRequest``: a mutation retried with the same client request id
  applies once (recorded in the transaction of its events).
- ``rebuild_projection``: replay the log into a read model.
"""

from libs.eventstore.catalog import EventCatalog, EventSpec, UnknownEventType
from libs.eventstore.consumer import (
    ConsumerSpec,
    DeliveredEvent,
    Delivery,
    DurableConsumer,
    EventHandler,
    RawDelivery,
    raw_decoder,
)
from libs.eventstore.headers import EventHeaders
from libs.eventstore.model import (
    ANY_VERSION,
    NO_STREAM,
    AppendResult,
    EventMetadata,
    NewEvent,
    RecordedEvent,
    WrongExpectedVersion,
)
from libs.eventstore.projection import Projection, rebuild_projection
from libs.eventstore.recorder import Recorder
from libs.eventstore.relay import EventRelay
from libs.eventstore.requests import ClientRequest, RequestLog
from libs.eventstore.store import EventStore
from libs.eventstore.tailer import EventTailer, TailBatch

__all__ = [
    "ANY_VERSION",
    "NO_STREAM",
    "AppendResult",
    "ClientRequest",
    "ConsumerSpec",
    "DeliveredEvent",
    "Delivery",
    "DurableConsumer",
    "EventCatalog",
    "EventHandler",
    "EventHeaders",
    "EventMetadata",
    "EventRelay",
    "EventSpec",
    "EventStore",
    "EventTailer",
    "NewEvent",
    "Projection",
    "RawDelivery",
    "RecordedEvent",
    "Recorder",
    "RequestLog",
    "TailBatch",
    "UnknownEventType",
    "WrongExpectedVersion",
    "raw_decoder",
    "rebuild_projection",
]
