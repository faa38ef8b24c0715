"""Prediction logs: sampled decisions written as events, off the response path.

``offer`` never waits: it puts a ``PredictionLogged`` — or a function that builds it, so
that building it costs the response nothing — into a bounded buffer and a
background task appends the buffer in batches, each batch as one new stream
(``predictions-<uuid>``, expected NO_STREAM: writers never contend on a stream row),
through the outbox like every other event, so the relay publishes them on
``lathe.inference.prediction.logged`` exactly once. When the buffer is full the log is
dropped and counted: serving never slows down for logging. Whether a decision is
logged is decided by a hash of its decision id (``domain.routing.sampled``), never by
its score.

A policy's served decisions (a chosen action and its distribution) are also written to
``inference.decisions`` in the same transaction as their events, so the outcome
consumer can join rewards to them and ListDecisions can read them (ADR 0024).

Each log carries the W3C trace context of the request that made it, so the relay's
publish and whoever consumes the log continue that request's trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from uuid6 import uuid7

from lathe.inference.v1 import events_pb2 as ev
from libs.db import transaction
from libs.eventstore import NO_STREAM, EventMetadata, EventStore
from services.inference.events import CATALOG, predictions_stream
from services.inference.store.decisions import insert_decisions

_log = logging.getLogger(__name__)
_BUILD_SLICE = 16
"""Logs built per turn of the event loop at a flush (~20-40 us each)."""

LogSource = ev.PredictionLogged | Callable[[], ev.PredictionLogged]
"""A log, or its builder (called at the flush, off the response's path)."""


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
        self._buffer: deque[tuple[LogSource, str]] = deque()
        self._wake = asyncio.Event()
        self.dropped = 0
        self.written = 0

    def offer(self, message: LogSource, traceparent: str = "") -> bool:
        """Buffer a log (or its builder) with the trace of the request that made it;
        False when dropped."""
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            return False
        self._buffer.append((message, traceparent))
        if len(self._buffer) >= self._flush_rows:
            self._wake.set()
        return True

    def _built(self, item: tuple[LogSource, str]) -> tuple[ev.PredictionLogged, str] | None:
        source, traceparent = item
        if isinstance(source, ev.PredictionLogged):
            return source, traceparent
        try:
            return source(), traceparent
        except Exception:  # a log that cannot be built is dropped, never fails the flush
            self.dropped += 1
            _log.exception("could not build a prediction log; dropped")
            return None

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
            taken = [self._buffer.popleft() for _ in range(min(len(self._buffer), 1000))]
            batch: list[tuple[ev.PredictionLogged, str]] = []
            for start in range(0, len(taken), _BUILD_SLICE):
                if start:
                    await asyncio.sleep(0)  # let requests in between slices: no long stall
                built = map(self._built, taken[start : start + _BUILD_SLICE])
                batch.extend(m for m in built if m is not None)
            if not batch:
                continue
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
                async with transaction(self._store.pool) as conn:
                    await self._store.append(
                        predictions_stream(str(uuid7())),
                        events,
                        expected_version=NO_STREAM,
                        conn=conn,
                    )
                    await insert_decisions(
                        conn, [message for message, _ in batch], [e.payload for e in events]
                    )
            except Exception as exc:  # Postgres away: keep what fits, try again next tick
                room = self._capacity - len(self._buffer)
                self._buffer.extendleft(reversed(batch[:room]))
                self.dropped += max(0, len(batch) - room)
                _log.warning("could not write %d prediction logs (%s); retrying", len(batch), exc)
                return
            self.written += len(batch)
