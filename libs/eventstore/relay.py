"""The transactional outbox relay: committed events -> JetStream, in order, once.

The events table *is* the outbox. The relay tails it gap-safely, publishes each
event to ``<namespace>.<service>.<aggregate>.<event>`` with ``Nats-Msg-Id`` set to
the event id, and stores its checkpoint only after JetStream has acknowledged
the whole batch. A crash between publish and checkpoint republishes the batch,
which JetStream drops as duplicates (within the stream's duplicate window), so
nothing is lost and nothing is delivered twice.

Exactly one relay per service publishes at a time: replicas contend for a
Postgres advisory lock held on the relay's connection, and a standby takes over
as soon as the leader's connection dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import asyncpg
from nats.js import JetStreamContext
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.eventstore.headers import EventHeaders
from libs.eventstore.model import RecordedEvent
from libs.eventstore.store import EventStore
from libs.eventstore.tailer import EventTailer
from libs.messaging.streams import EventStreamNames
from libs.telemetry.propagation import context_from_traceparent, inject_context

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
_meter = metrics.get_meter(__name__)
_published = _meter.create_counter("lathe.relay.events_published", unit="{event}")

_GAP_POLL_S = 0.005
# Checkpoint at most this often while busy (always before going idle): a checkpoint
# lost in a crash only republishes events that JetStream drops as duplicates.
_CHECKPOINT_EVERY_S = 0.05
_RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0, 5.0)


class EventRelay:
    """Publishes one service's events from its Postgres event store to JetStream."""

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        names: EventStreamNames,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        checkpoint_name: str = "relay",
    ) -> None:
        self._store = store
        self._js = js
        self._names = names
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._checkpoint_name = checkpoint_name
        self._lock_key = f"lathe.relay.{store.schema}.{checkpoint_name}"

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set, surviving database and broker outages."""
        failures = 0
        while not stop.is_set():
            try:
                async with self._store.pool.acquire() as conn:
                    if await conn.fetchval(
                        "SELECT pg_try_advisory_lock(hashtext($1))", self._lock_key
                    ):
                        failures = 0
                        try:
                            await self._lead(conn, stop)
                        finally:
                            # Pooled connections are not reset on release (see connect_pool).
                            with contextlib.suppress(Exception):
                                await conn.execute(
                                    "RESET synchronous_commit; SELECT pg_advisory_unlock_all()"
                                )
                        continue
                await _wait(stop, self._poll_interval_s)  # another replica leads
            except Exception as exc:  # database or broker outage: back off and resume
                delay = _RETRY_BACKOFF_S[min(failures, len(_RETRY_BACKOFF_S) - 1)]
                failures += 1
                _log.warning("event relay interrupted (%r); resuming in %.2fs", exc, delay)
                await _wait(stop, delay)

    async def _lead(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        signal = self._store.signal
        # Appends in this process ring `signal.local` directly; other processes NOTIFY.
        signal.leading_here = True

        def _on_notify(*_: object) -> None:
            signal.local.set()

        await conn.add_listener(self._store.notify_channel, _on_notify)
        # Losing a checkpoint write in a crash only republishes events JetStream
        # dedupes, so checkpoint commits need not wait for the WAL flush.
        await conn.execute("SET synchronous_commit TO off")
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: signal.local.set())
        try:
            saved = position = await self._store.load_checkpoint(self._checkpoint_name, conn=conn)
            saved_at = time.monotonic()
            tailer = EventTailer(self._store.schema, position=position)
            _log.info("event relay for %s leading from position %d", self._store.schema, position)
            while not stop.is_set():
                signal.local.clear()
                batch = await tailer.read(conn, self._batch_size)
                if batch.events:
                    await self._publish(batch.events)
                if tailer.position != saved and (
                    not batch.events or time.monotonic() - saved_at >= _CHECKPOINT_EVERY_S
                ):
                    await self._store.save_checkpoint(
                        self._checkpoint_name, tailer.position, conn=conn
                    )
                    saved, saved_at = tailer.position, time.monotonic()
                if not batch.events:
                    # A hole may fill any moment (its writer's commit rings the signal).
                    timeout = _GAP_POLL_S if batch.waiting_on_gap else self._poll_interval_s
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout):
                            await signal.local.wait()
        finally:
            stopping.cancel()
            signal.leading_here = False
            with contextlib.suppress(Exception):
                await conn.remove_listener(self._store.notify_channel, _on_notify)

    async def _publish(self, events: Sequence[RecordedEvent]) -> None:
        pending: list[asyncio.Future[object]] = []
        for event in events:
            subject = self._names.subject(event.subject_tail)
            span = _tracer.start_span(
                f"{subject} publish",
                context=context_from_traceparent(event.metadata.traceparent),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": subject,
                    "messaging.message.id": str(event.event_id),
                    "lathe.global_position": event.global_position,
                },
            )
            headers: dict[str, str] = {}
            inject_context(headers, context=trace.set_span_in_context(span))
            future = await self._js.publish_async(
                subject,
                event.payload,
                headers=EventHeaders.encode(event, traceparent=headers.get("traceparent", "")),
                stream=self._names.stream,
            )
            future.add_done_callback(lambda f, s=span: _end_span(s, f))
            pending.append(future)
        await asyncio.gather(*pending)
        _published.add(len(events), {"service": self._names.service})


def _end_span(span: trace.Span, future: asyncio.Future[object]) -> None:
    if future.cancelled():
        span.set_status(Status(StatusCode.ERROR, "publish cancelled"))
    elif future.exception() is not None:
        span.record_exception(future.exception())  # type: ignore[arg-type]
        span.set_status(Status(StatusCode.ERROR, str(future.exception())))
    span.end()


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
