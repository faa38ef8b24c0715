"""Prediction logs: sampled decisions written as events, off the response path.

``offer`` never waits: it puts a built ``PredictionLogged`` into a bounded buffer and a
background task appends the buffer in batches, each batch as one new stream
(``predictions-<uuid>``, expected NO_STREAM: writers never contend on a stream row),
through the outbox like every other event, so the relay publishes them on
``lathe.inference.prediction.logged`` exactly once. When the buffer is full the log is
dropped and counted: serving never slows down for logging. Whether a decision is
logged is decided by a hash of its decision id (``domain.routing.sampled``), never by
its score. Each log carries the W3C trace context of the request that made it, so the
relay's publish and whoever consumes the log continue that request's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from uuid6 import uuid7

from lathe.inference.v1 import events_pb2 as ev
from libs.eventstore import NO_STREAM, EventMetadata, EventStore
from services.inference.events import CATALOG, predictions_stream

_log = logging.getLogger(__name__)


class PredictionLogger:
    def __init__(
        self,
        store: EventStore,
        *,
        sample_rate: float,
        capacity: int,
        flush_rows: int = 500,
        flush_interval_s: float = 0.2,
    ) -> None:
        self._store = store
        self.sample_rate = sample_rate
        self._capacity = capacity
        self._flush_rows = flush_rows
        self._interval_s = flush_interval_s
        self._buffer: deque[tuple[ev.PredictionLogged, str]] = deque()
        self._wake = asyncio.Event()
        self.dropped = 0
        self.written = 0

    def offer(self, message: ev.PredictionLogged, traceparent: str = "") -> bool:
        """Queue ``message`` (``traceparent``: the request's trace, continued by the relay)."""
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            return False
        self._buffer.append((message, traceparent))
        if len(self._buffer) >= self._flush_rows:
            self._wake.set()
        return True

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), 1000))]
            events = [
                CATALOG.new_event(
                    message,
                    EventMetadata(
                        actor="inference",
                        correlation_id=message.decision_id,
                        traceparent=traceparent,
                    ),
                )
                for message, traceparent in batch
            ]
            try:
                await self._store.append(
                    predictions_stream(str(uuid7())), events, expected_version=NO_STREAM
                )
            except Exception as exc:  # Postgres away: keep what fits, try again next tick
                room = self._capacity - len(self._buffer)
                self._buffer.extendleft(reversed(batch[:room]))
                self.dropped += max(0, len(batch) - room)
                _log.warning("could not write %d prediction logs (%s); retrying", len(batch), exc)
                return
            self.written += len(batch)
