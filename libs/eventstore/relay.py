"""The transactional outbox relay: committed events -> JetStream, in order, once.

The events table *is* the outbox. The relay tails it gap-safely and publishes each
event to ``<namespace>.<service>.<aggregate>.<event>`` (``OrderedPublisher``: each
message must land right after its predecessor, so the stream never gets a gap, a
reordering or a copy). Publishing is pipelined; a background task stores the
checkpoint, at most every ``_CHECKPOINT_EVERY_S``, up to what JetStream acknowledged.

Every wait on JetStream is bounded. When an ack does not come (the broker was
killed, the connection is stuck) or a message is refused, the relay gives up its
leadership, backs off, and leads again from what the stream already holds: the
last ``Lathe-Position`` in it, or the checkpoint if that is further. Nothing at or
below that position is published again, however long the stall (the stream's
duplicate window is not relied on).

Exactly one relay per service publishes at a time: replicas contend for a
Postgres advisory lock held on the relay's connection, and a standby takes over
as soon as the leader's connection dies or the leader steps down.

Health: ``healthy_at`` is the last moment this relay was known to work (caught up,
acks advancing, or standing by for another leader); the service host turns
liveness NOT_SERVING when it goes stale while Postgres and NATS both answer.
``lathe.relay.backlog`` (latest position - checkpoint) is exported as a gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import Protocol

import asyncpg
from nats.js import JetStreamContext
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from libs.db import quote_ident
from libs.eventstore.model import RecordedEvent
from libs.eventstore.publisher import OrderedPublisher, PublishFailed, read_stream_head
from libs.eventstore.store import EventStore
from libs.eventstore.tailer import EventTailer
from libs.messaging.streams import EventStreamNames

_log = logging.getLogger(__name__)
_meter = metrics.get_meter(__name__)
_published = _meter.create_counter("lathe.relay.events_published", unit="{event}")

_GAP_POLL_S = 0.005
# Checkpoint at most this often while busy (and soon after going idle): a checkpoint
# lost in a crash only makes the next leader compare with the stream's head.
_CHECKPOINT_EVERY_S = 0.05
_RETRY_BACKOFF_S = (0.05, 0.2, 1.0, 2.0, 5.0)
_BACKLOG_EVERY_S = 5.0
# On stop, wait this long for outstanding acks before the last checkpoint (the next
# leader starts after the stream's head anyway).
_DRAIN_ON_STOP_S = 1.0

_relays: weakref.WeakSet[EventRelay] = weakref.WeakSet()


def _observe_backlog(_: CallbackOptions) -> Iterable[Observation]:
    for relay in list(_relays):
        if relay.backlog is not None:
            yield Observation(relay.backlog, {"service": relay.service})


_meter.create_observable_gauge(
    "lathe.relay.backlog",
    callbacks=[_observe_backlog],
    unit="{event}",
    description="Latest committed event position minus the relay's checkpoint",
)


class RelayProbe(Protocol):
    """Timestamps for a benchmark's stage breakdown; called per batch and per ack, never
    per event, so a relay without a probe pays one ``is None`` test per batch."""

    def read(self, events: Sequence[RecordedEvent], woke_ns: int) -> None:
        """A tail read returned ``events``; the relay loop woke at ``woke_ns`` for it."""

    def handed(self, events: Sequence[RecordedEvent]) -> None:
        """``events`` are with the NATS client (``publish`` returned)."""

    def acked(self, position: int) -> None:
        """JetStream acknowledged every event up to ``position``."""


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
        ack_timeout_s: float = 5.0,
    ) -> None:
        """``ack_timeout_s``: how long the oldest unacknowledged publish may wait before
        the relay gives up leadership and starts again from the stream's head."""
        self._store = store
        self._js = js
        self._names = names
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._checkpoint_name = checkpoint_name
        self._ack_timeout_s = ack_timeout_s
        self._lock_key = f"lathe.relay.{store.schema}.{checkpoint_name}"
        s = quote_ident(store.schema, what="event store schema")
        self._backlog_sql = f"""
            SELECT (SELECT coalesce(max(global_position), 0) FROM {s}.events)
                 - coalesce((SELECT position FROM {s}.checkpoints WHERE name = $1), 0)"""
        # One statement, its commit not waiting for the WAL flush (a lost checkpoint only
        # makes the next leader compare with the stream's head), never moving backwards
        # (a write from a relay that just lost its leadership may land late).
        self._save_sql = f"""
            WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
            INSERT INTO {s}.checkpoints AS c (name, position)
            SELECT $1, $2 FROM async_commit
            ON CONFLICT (name) DO UPDATE
            SET position = greatest(c.position, EXCLUDED.position), updated_at = now()"""
        self._acked = asyncio.Event()
        self._publisher: OrderedPublisher | None = None
        self.service = names.service
        self.leading = False
        """True while this relay holds the leadership."""
        self.healthy_at = time.monotonic()
        """Monotonic time this relay was last known to work (see the module docstring)."""
        self.backlog: int | None = None
        """Latest committed position - checkpoint, as last measured (None: not yet)."""
        self.probe: RelayProbe | None = None
        """Benchmarks only: told when batches are read, handed over and acknowledged."""
        _relays.add(self)

    @property
    def in_flight(self) -> int:
        """Events published whose JetStream acks have not arrived yet."""
        return self._publisher.in_flight if self._publisher is not None else 0

    def stalled_for_s(self) -> float:
        """Seconds since this relay was last known to work."""
        return time.monotonic() - self.healthy_at

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set, surviving database and broker outages."""
        measuring = asyncio.create_task(self._measure_backlog(stop))
        try:
            await self._run(stop)
        finally:
            measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await measuring
            self.backlog = None  # a stopped relay reports nothing

    async def _run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            healthy_before = self.healthy_at
            try:
                async with self._store.pool.acquire() as conn:
                    if await conn.fetchval(
                        "SELECT pg_try_advisory_lock(hashtext($1))", self._lock_key
                    ):
                        try:
                            await self._lead(conn, stop)
                        finally:
                            # Pooled connections are not reset on release (see connect_pool).
                            with contextlib.suppress(Exception):
                                await conn.execute("SELECT pg_advisory_unlock_all()")
                        continue
                failures = 0
                self.healthy_at = time.monotonic()  # standing by: another replica leads
                await _wait(stop, self._poll_interval_s)
            except Exception as exc:  # database or broker outage, refused publish: resync
                if self.healthy_at != healthy_before:
                    failures = 0  # it worked for a while: start the backoff over
                delay = _RETRY_BACKOFF_S[min(failures, len(_RETRY_BACKOFF_S) - 1)]
                failures += 1
                # Through a long outage: the first few, then about one a minute.
                if failures <= len(_RETRY_BACKOFF_S) or failures % 12 == 0:
                    _log.warning(
                        "event relay for %s interrupted (%s, %d in a row); resuming in %.2fs "
                        "from the stream's head",
                        self.service,
                        exc if isinstance(exc, PublishFailed) else repr(exc),
                        failures,
                        delay,
                    )
                await _wait(stop, delay)

    async def _lead(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        signal = self._store.signal
        wake = signal.local
        # Appends in this process ring `signal.local` directly; other processes NOTIFY.
        signal.leading_here = True

        def _on_notify(*_: object) -> None:
            wake.set()

        await conn.add_listener(self._store.notify_channel, _on_notify)
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: wake.set())
        checkpointing: asyncio.Task[None] | None = None
        publisher: OrderedPublisher | None = None
        self.leading = True
        try:
            checkpoint = await self._store.load_checkpoint(self._checkpoint_name, conn=conn)
            async with asyncio.timeout(self._ack_timeout_s * 2):
                head = await read_stream_head(self._js, self._names.stream)
            position = max(checkpoint, head.position)
            if head.position > checkpoint:
                _log.info(
                    "event relay for %s: the stream already holds events up to position %d "
                    "(checkpoint %d); publishing after it",
                    self.service,
                    head.position,
                    checkpoint,
                )
            publisher = self._publisher = await OrderedPublisher.open(
                self._js,
                self._names,
                head,
                position=position,
                ack_timeout_s=self._ack_timeout_s,
                max_in_flight=2 * self._batch_size,
                on_settled=lambda n: self._settled(n, wake),
            )
            checkpointing = asyncio.create_task(self._checkpoint(publisher, checkpoint))
            tailer = EventTailer(self._store.schema, position=position)
            _log.info("event relay for %s leading from position %d", self.service, position)
            while not stop.is_set():
                publisher.check()
                wake.clear()
                probe, woke_ns = self.probe, time.monotonic_ns()
                batch = await tailer.read(conn, self._batch_size)
                if batch.events:
                    if probe is not None:
                        probe.read(batch.events, woke_ns)
                    await publisher.publish(batch.events)
                    if probe is not None:
                        probe.handed(batch.events)
                    if len(batch.events) == self._batch_size:
                        continue  # more is waiting
                elif publisher.in_flight == 0:
                    self.healthy_at = time.monotonic()  # caught up
                # A hole may fill any moment (its writer's commit rings the signal).
                timeout = _GAP_POLL_S if batch.waiting_on_gap else self._poll_interval_s
                if (deadline := publisher.deadline()) is not None:
                    timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await wake.wait()
            await publisher.drain(_DRAIN_ON_STOP_S)
            checkpointing.cancel()
            await conn.execute(self._save_sql, self._checkpoint_name, publisher.acked_position)
        finally:
            self.leading = False
            self._publisher = None
            if publisher is not None:
                await publisher.close()
            if checkpointing is not None:
                checkpointing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checkpointing
            stopping.cancel()
            signal.leading_here = False
            with contextlib.suppress(Exception):
                await conn.remove_listener(self._store.notify_channel, _on_notify)

    def _settled(self, count: int, wake: asyncio.Event) -> None:
        if count:
            _published.add(count, {"service": self.service})
            self.healthy_at = time.monotonic()  # acks advance
            self._acked.set()
            if self.probe is not None and self._publisher is not None:
                self.probe.acked(self._publisher.acked_position)
        else:
            wake.set()  # a failure: the loop raises it

    async def _checkpoint(self, publisher: OrderedPublisher, saved: int) -> None:
        """Store what JetStream acknowledged, off the publishing path, on a pool connection.

        A write that lands after this relay lost its leadership can only move the
        checkpoint back, which the next leader corrects from the stream's head.
        """
        while True:
            position = publisher.acked_position
            if position > saved:
                try:
                    await self._store.pool.execute(self._save_sql, self._checkpoint_name, position)
                    saved = position
                except (asyncpg.PostgresError, OSError) as exc:
                    _log.warning("event relay for %s: checkpoint not saved (%r)", self.service, exc)
                await asyncio.sleep(_CHECKPOINT_EVERY_S)
            else:
                self._acked.clear()
                await self._acked.wait()

    async def _measure_backlog(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with asyncio.timeout(_BACKLOG_EVERY_S):
                    self.backlog = int(
                        await self._store.pool.fetchval(self._backlog_sql, self._checkpoint_name)
                    )
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                _log.debug("event relay for %s: backlog not measured (%r)", self.service, exc)
            await _wait(stop, _BACKLOG_EVERY_S)


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)
