"""Durable JetStream consumers with exactly-once effects.

A handler's effect and the record that its event was processed commit in one
Postgres transaction; the JetStream ack follows. A crash before the commit
means redelivery and a fresh attempt; a crash after it means redelivery that
finds the record and only acks. Either way the effect happens once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.eventstore.catalog import EventCatalog
from libs.eventstore.headers import EventHeaders
from libs.eventstore.model import RecordedEvent
from libs.eventstore.store import EventStore
from libs.telemetry.propagation import extract_context

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class DeliveredEvent:
    """An event received from JetStream, decoded with the producer's protos."""

    event: RecordedEvent
    message: Message
    subject: str
    delivery_attempt: int


EventHandler = Callable[[DeliveredEvent, asyncpg.Connection], Awaitable[None]]
"""Applies one event's effect using ``conn``, inside the consumer's transaction."""


@dataclass(frozen=True)
class ConsumerSpec:
    """What a durable consumer subscribes to."""

    name: str
    """Durable name; replicas with the same name share the work."""
    stream: str
    filter_subject: str
    """E.g. ``lathe.model_registry.>`` or ``lathe.model_registry.alias.*``."""
    batch_size: int = 64
    ack_wait_s: float = 30.0
    max_deliver: int = 20
    """After this many failed attempts JetStream stops redelivering (a dead letter)."""


class DurableConsumer:
    """Consumes events from JetStream into this service's Postgres, exactly once."""

    def __init__(
        self,
        spec: ConsumerSpec,
        *,
        js: JetStreamContext,
        store: EventStore,
        catalog: EventCatalog,
        handler: EventHandler,
    ) -> None:
        self._spec = spec
        self._js = js
        self._store = store
        self._catalog = catalog
        self._handler = handler

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle messages until ``stop`` is set."""
        spec = self._spec
        subscription = await self._js.pull_subscribe(
            spec.filter_subject,
            durable=spec.name,
            stream=spec.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=spec.ack_wait_s,
                max_deliver=spec.max_deliver,
            ),
        )
        try:
            while not stop.is_set():
                try:
                    messages = await subscription.fetch(spec.batch_size, timeout=0.5)
                except TimeoutError:
                    continue
                for message in messages:
                    await self.handle(message)
        finally:
            await subscription.unsubscribe()

    async def handle(self, msg: Msg) -> None:
        """Apply one message's effect once, then ack it (nak on failure)."""
        headers = msg.headers or {}
        attempt = msg.metadata.num_delivered if msg.reply else 1
        with _tracer.start_as_current_span(
            f"{msg.subject} process",
            context=extract_context(headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self._spec.name,
                "messaging.message.id": headers.get("Nats-Msg-Id", ""),
            },
        ) as span:
            try:
                event = EventHeaders.decode(headers, msg.data, msg.subject)
                if event.event_type not in self._catalog:
                    _log.debug("consumer %s skips event type %s", self._spec.name, event.event_type)
                    await msg.ack()
                    return
                delivered = DeliveredEvent(
                    event=event,
                    message=self._catalog.decode(event.event_type, event.payload),
                    subject=msg.subject,
                    delivery_attempt=attempt,
                )
            except ValueError as exc:
                # Malformed envelope or payload: retrying cannot fix it.
                _log.error(
                    "consumer %s drops malformed message on %s: %s",
                    self._spec.name,
                    msg.subject,
                    exc,
                )
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                await msg.term()
                return
            try:
                async with self._store.pool.acquire() as conn, conn.transaction():
                    first_time = await conn.fetchval(
                        self._store.sql.mark_processed, self._spec.name, event.event_id
                    )
                    if first_time is not None:
                        await self._handler(delivered, conn)
                    span.set_attribute("lathe.duplicate", first_time is None)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                delay = min(30.0, 0.25 * 2**attempt)
                _log.exception(
                    "consumer %s failed on event %s (attempt %d of %d); retrying in %.1fs",
                    self._spec.name,
                    event.event_id,
                    attempt,
                    self._spec.max_deliver,
                    delay,
                )
                await msg.nak(delay=delay)
                return
            await msg.ack()
