"""Durable JetStream consumers with exactly-once effects.

A handler's effect and the record that its event was processed commit in one
Postgres transaction; the JetStream ack follows. A crash before the commit
means redelivery and a fresh attempt; a crash after it means redelivery that
finds the record and only acks. Either way the effect happens once.

While a message waits in this process or its handler runs, the consumer tells
JetStream it is in progress (``+WPI``) every third of ``ack_wait_s``, so a slow
handler is not redelivered meanwhile, and the ack wait can be short: a message
held by a process that died is redelivered ``ack_wait_s`` (5 s) later. A consumer
asked to stop gives back (``nak``) what it holds but has not started on.

A handler that fails is retried by JetStream and dead-lettered after
``max_deliver`` attempts. Postgres being unreachable is not the event's fault:
the consumer then unsubscribes, leaves its messages unacknowledged and waits
until Postgres answers again, so an outage of any length costs each message at
most a couple of attempts instead of dead-lettering it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar
from uuid import UUID, uuid5

import asyncpg
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from libs.db import BoundedPool, transaction_opened_with
from libs.db.slices import DELETE_SLICE_ROWS, delete_in_slices
from libs.eventstore.catalog import EventCatalog
from libs.eventstore.headers import EventHeaders
from libs.eventstore.model import RecordedEvent
from libs.eventstore.store import EventStore
from libs.telemetry.propagation import extract_context

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0, 5.0)
_PRUNE_EVERY_S = 3600.0
_POSTGRES_UNREACHABLE = (
    asyncpg.PostgresConnectionError,  # the connection broke or could not be made
    asyncpg.InterfaceError,  # e.g. "connection is closed"
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up or in recovery
    OSError,
    TimeoutError,
)


class PostgresUnreachable(Exception):
    """The consumer's database went away mid-batch; its messages stay unacknowledged."""


class Delivery(Protocol):
    """What a consumer needs of any delivered message: an identity for exactly-once."""

    @property
    def event_id(self) -> UUID: ...

    @property
    def delivery_attempt(self) -> int: ...


@dataclass(frozen=True)
class DeliveredEvent:
    """A Lathe event received from JetStream, decoded with the producer's protos."""

    event: RecordedEvent
    message: Message
    subject: str
    delivery_attempt: int

    @property
    def event_id(self) -> UUID:
        return self.event.event_id


@dataclass(frozen=True)
class RawDelivery:
    """A message that is not a Lathe event, e.g. a product system's business event."""

    event_id: UUID
    """The producer's Nats-Msg-Id when it is a UUID, else derived from the stream sequence."""
    subject: str
    data: bytes
    headers: dict[str, str]
    stream_sequence: int
    arrival_time: datetime
    """When JetStream stored the message."""
    delivery_attempt: int


_RAW_NAMESPACE = UUID("6f1e8d62-7a1b-4c3e-9a55-0c2b8f4d9e21")


def raw_decoder(msg: Msg) -> RawDelivery:
    """Decode any JetStream message; its identity survives redelivery."""
    headers = msg.headers or {}
    metadata = msg.metadata
    try:
        event_id = UUID(headers.get("Nats-Msg-Id", ""))
    except ValueError:
        stream_key = f"{metadata.stream}:{metadata.sequence.stream}"
        event_id = uuid5(_RAW_NAMESPACE, stream_key)
    return RawDelivery(
        event_id=event_id,
        subject=msg.subject,
        data=msg.data,
        headers=dict(headers),
        stream_sequence=metadata.sequence.stream,
        arrival_time=metadata.timestamp,
        delivery_attempt=metadata.num_delivered,
    )


D = TypeVar("D", bound=Delivery)

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
    """At most this many messages share one transaction."""
    max_in_flight: int = 1000
    """Delivered but unacknowledged messages per consumer (JetStream max_ack_pending)."""
    ack_wait_s: float = 5.0
    """How long JetStream waits for an ack (or an in-progress signal, sent every third of
    this while a message is held) before redelivering: the delay before messages a
    crashed process held are redelivered."""
    max_deliver: int = 20
    """After this many failed attempts JetStream stops redelivering (a dead letter)."""
    retention: timedelta = timedelta(days=7)
    """How long records of processed events are kept for deduplication. JetStream
    redelivers within about max_deliver x (ack_wait + nak delay), minutes by default,
    so this leaves a wide margin; a message delivered again after it would be applied
    again."""


class DurableConsumer(Generic[D]):
    """Consumes messages from JetStream into this service's Postgres, exactly once.

    By default messages are Lathe events decoded with ``catalog``; pass ``decoder``
    (e.g. ``raw_decoder``) to consume other messages. A decoder raises ValueError
    for a malformed message (terminated, never retried) or returns None to skip one.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        *,
        js: JetStreamContext,
        store: EventStore,
        handler: Callable[[D, asyncpg.Connection], Awaitable[None]] | None = None,
        batch_handler: Callable[[list[D], asyncpg.Connection], Awaitable[None]] | None = None,
        catalog: EventCatalog | None = None,
        decoder: Callable[[Msg], D | None] | None = None,
    ) -> None:
        """Pass ``handler`` (one delivery at a time) or ``batch_handler`` (every new
        delivery of a batch in one call, e.g. to merge them in a few statements); either
        runs in the batch's transaction, and a failing batch is retried one delivery per
        call."""
        if decoder is None and catalog is None:
            raise TypeError("DurableConsumer needs a catalog (Lathe events) or a decoder")
        if (handler is None) == (batch_handler is None):
            raise TypeError("DurableConsumer needs exactly one of handler and batch_handler")
        if not isinstance(store.pool, BoundedPool):
            raise TypeError(
                "DurableConsumer needs an event store on a pool from libs.db.connect_pool: "
                "its connections open a batch's transaction in one round trip"
            )
        self._spec = spec
        self._js = js
        self._store = store
        self._handler = handler
        self._batch_handler = batch_handler
        self._catalog = catalog
        self._decoder = decoder or self._lathe_event  # type: ignore[assignment]
        self._held: _Held | None = None

    def delivered_at(self, msg: Msg) -> float | None:
        """When ``msg`` reached this process (monotonic s), while it is held; for
        benchmarks' stage breakdowns (the time is taken anyway, for in-progress signals)."""
        return self._held.since(msg) if self._held is not None else None

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle messages until ``stop`` is set, surviving outages."""
        pruning = asyncio.create_task(self._prune_periodically(stop))
        try:
            await self._run(stop)
        finally:
            pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruning

    async def prune(self, *, slice_rows: int = DELETE_SLICE_ROWS) -> int:
        """Delete records of events processed longer than ``retention`` ago; how many."""
        return await delete_in_slices(
            self._store.pool,
            self._store.sql.prune_processed,
            self._spec.name,
            self._spec.retention,
            slice_rows=slice_rows,
        )

    async def _prune_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                deleted = await self.prune()
                if deleted:
                    _log.info("consumer %s pruned %d processed records", self._spec.name, deleted)
            except _POSTGRES_UNREACHABLE as exc:
                _log.warning("consumer %s could not prune (%r)", self._spec.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _PRUNE_EVERY_S)

    async def _run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                await self._consume(stop)
            except Exception as exc:  # database or broker outage: back off and resume
                delay = _RETRY_BACKOFF_S[min(failures, len(_RETRY_BACKOFF_S) - 1)]
                failures += 1
                _log.warning(
                    "consumer %s interrupted (%r); resuming in %.2fs", self._spec.name, exc, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                # Subscribed, JetStream would keep delivering (and counting attempts)
                # into a consumer that cannot apply anything.
                await self._until_postgres_answers(stop)
            else:
                failures = 0

    async def _until_postgres_answers(self, stop: asyncio.Event) -> None:
        delay, waited = 0.5, 0.0
        while not stop.is_set():
            try:
                async with asyncio.timeout(5):
                    await self._store.pool.fetchval("SELECT 1")
                if waited:
                    _log.info("consumer %s: Postgres answers again; resuming", self._spec.name)
                return
            except _POSTGRES_UNREACHABLE as exc:
                if not waited:
                    _log.warning(
                        "consumer %s waits for Postgres (%r) before taking messages again",
                        self._spec.name,
                        exc,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            waited += delay
            delay = min(delay * 2, 5.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        spec = self._spec
        inbox: asyncio.Queue[Msg] = asyncio.Queue()
        held = self._held = _Held()

        async def deliver(msg: Msg) -> None:
            held.add(msg)
            inbox.put_nowait(msg)  # bounded by max_ack_pending

        await self._reconcile_config()
        # A push consumer with a deliver group: JetStream sends each message as soon
        # as it is stored (no pull round trip, no long-poll tail), and replicas with
        # the same durable name share the work as a queue group.
        subscription = await self._js.subscribe(
            spec.filter_subject,
            queue=spec.name,
            durable=spec.name,
            stream=spec.stream,
            cb=deliver,
            manual_ack=True,
            config=self._consumer_config(),
        )
        progress = asyncio.create_task(held.keep_in_progress(spec.ack_wait_s / 3))
        try:
            # One connection for the consumer's life: no pool round trip per batch.
            async with self._store.pool.acquire() as conn:
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(0.5):
                            batch = [await inbox.get()]
                    except TimeoutError:
                        continue
                    while len(batch) < spec.batch_size and not inbox.empty():
                        batch.append(inbox.get_nowait())
                    try:
                        await self.handle_batch(batch, conn)
                    finally:
                        held.discard(batch)
            # Stopping: give back what this process holds but never started on, so
            # another replica (or this service once restarted) gets it now, not after
            # ack_wait.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            while not inbox.empty():
                with contextlib.suppress(Exception):
                    await inbox.get_nowait().nak()
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def _consumer_config(self) -> ConsumerConfig:
        spec = self._spec
        return ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=spec.ack_wait_s,
            max_deliver=spec.max_deliver,
            max_ack_pending=spec.max_in_flight,
        )

    async def _reconcile_config(self) -> None:
        """Bring an existing durable consumer to this spec's ack wait and limits.

        ``subscribe`` binds to an existing consumer as it is, so without this a consumer
        created by an older release would keep, e.g., its 30 s ack wait for ever.
        """
        spec = self._spec
        try:
            info = await self._js.consumer_info(spec.stream, spec.name)
        except NotFoundError:
            return  # subscribe creates it with this spec's configuration
        config = info.config
        wanted = (spec.ack_wait_s, spec.max_deliver, spec.max_in_flight)
        if (config.ack_wait, config.max_deliver, config.max_ack_pending) == wanted:
            return
        _log.info(
            "consumer %s: updating ack_wait %ss -> %ss, max_deliver %s -> %s, "
            "max_ack_pending %s -> %s",
            spec.name,
            config.ack_wait,
            spec.ack_wait_s,
            config.max_deliver,
            spec.max_deliver,
            config.max_ack_pending,
            spec.max_in_flight,
        )
        config.ack_wait, config.max_deliver, config.max_ack_pending = wanted
        await self._js.add_consumer(spec.stream, config)

    async def handle_batch(self, messages: list[Msg], conn: asyncpg.Connection) -> None:
        """Apply a fetched batch in one transaction (one commit, not one per event).

        If any handler fails, the batch rolls back and each message is retried in
        a transaction of its own, so only the failing one is nak'ed.
        """
        ready: list[tuple[Msg, D]] = []
        seen: set[UUID] = set()
        for msg in messages:
            delivered = await self._decode(msg)
            if delivered is None:
                continue
            if delivered.event_id in seen:  # the same event twice in one batch
                await msg.ack()
                continue
            seen.add(delivered.event_id)
            ready.append((msg, delivered))
        if not ready:
            return
        try:
            await self._apply(conn, ready)
        except _POSTGRES_UNREACHABLE as exc:
            raise PostgresUnreachable(str(exc)) from exc
        except Exception:
            if len(ready) == 1:
                await self._nak(*ready[0])
                return
            for one in ready:
                try:
                    await self._apply(conn, [one])
                except _POSTGRES_UNREACHABLE as exc:
                    raise PostgresUnreachable(str(exc)) from exc
                except Exception:
                    await self._nak(*one)
                else:
                    await one[0].ack()
            return
        for msg, _ in ready:
            await msg.ack()

    async def _apply(self, conn: asyncpg.Connection, ready: list[tuple[Msg, D]]) -> None:
        """In one transaction: record the events as processed, run handlers for the new ones.

        The transaction opens with the recording statement in one round trip (ADR 0013);
        only a batch holding an event recorded before (a redelivery) asks which are new.
        """
        event_ids = [delivered.event_id for _, delivered in ready]
        sql = self._store.sql
        recording = sql.mark_processed(self._spec.name, event_ids)
        async with transaction_opened_with(conn, recording) as status:
            if _rows_affected(status) == len(event_ids):
                new = set(event_ids)
            else:
                new = {
                    row["event_id"]
                    for row in await conn.fetch(sql.processed_here, self._spec.name, event_ids)
                }
            for msg, delivered in ready:
                with _tracer.start_as_current_span(
                    f"{msg.subject} process",
                    context=extract_context(msg.headers or {}),
                    kind=SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "nats",
                        "messaging.destination.name": msg.subject,
                        "messaging.consumer.group.name": self._spec.name,
                        "messaging.message.id": str(delivered.event_id),
                        "lathe.duplicate": delivered.event_id not in new,
                    },
                ):
                    if delivered.event_id in new and self._handler is not None:
                        await self._handler(delivered, conn)
            if self._batch_handler is not None:
                fresh = [delivered for _, delivered in ready if delivered.event_id in new]
                if fresh:
                    await self._batch_handler(fresh, conn)

    async def _decode(self, msg: Msg) -> D | None:
        """The decoded message, or None after acking/terminating what cannot be handled."""
        try:
            delivered = self._decoder(msg)
        except ValueError as exc:
            # Malformed envelope or payload: retrying cannot fix it.
            _log.error(
                "consumer %s drops malformed message on %s: %s", self._spec.name, msg.subject, exc
            )
            await msg.term()
            return None
        if delivered is None:
            await msg.ack()
        return delivered

    def _lathe_event(self, msg: Msg) -> DeliveredEvent | None:
        event = EventHeaders.decode(msg.headers or {}, msg.data, msg.subject)
        assert self._catalog is not None
        if event.event_type not in self._catalog:
            _log.debug("consumer %s skips event type %s", self._spec.name, event.event_type)
            return None
        return DeliveredEvent(
            event=event,
            message=self._catalog.decode(event.event_type, event.payload),
            subject=msg.subject,
            delivery_attempt=msg.metadata.num_delivered if msg.reply else 1,
        )

    async def _nak(self, msg: Msg, delivered: D) -> None:
        attempt = delivered.delivery_attempt
        delay = min(30.0, 0.25 * 2**attempt)
        _log.exception(
            "consumer %s failed on event %s (attempt %d of %d); retrying in %.1fs",
            self._spec.name,
            delivered.event_id,
            attempt,
            self._spec.max_deliver,
            delay,
        )
        await msg.nak(delay=delay)


def _rows_affected(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 3``."""
    return int(status.rsplit(" ", 1)[-1])


class _Held:
    """Messages delivered to this process and not yet acknowledged, and since when
    JetStream last heard about each (delivery or in-progress signal)."""

    def __init__(self) -> None:
        self._since: dict[int, tuple[Msg, float]] = {}

    def add(self, msg: Msg) -> None:
        self._since[id(msg)] = (msg, time.monotonic())

    def since(self, msg: Msg) -> float | None:
        entry = self._since.get(id(msg))
        return entry[1] if entry is not None else None

    def discard(self, messages: list[Msg]) -> None:
        for msg in messages:
            self._since.pop(id(msg), None)

    async def keep_in_progress(self, period_s: float) -> None:
        """Every ``period_s``, tell JetStream that messages held that long are in progress."""
        while True:
            await asyncio.sleep(period_s)
            due = time.monotonic() - period_s
            for key, (msg, since) in list(self._since.items()):
                if since > due or key not in self._since:
                    continue
                if msg.is_acked:
                    del self._since[key]
                    continue
                with contextlib.suppress(Exception):  # e.g. reconnecting: the next round
                    await msg.in_progress()
                    if key in self._since:  # not settled meanwhile
                        self._since[key] = (msg, time.monotonic())
