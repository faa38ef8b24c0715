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

The buffer is bounded twice: in logs, and in the rows of the requests their builders
hold (a builder keeps its whole request until the write; ``offer_request`` takes all of
a request's logs or none). A batch that could not be written because Postgres is away
is retried as the same stream with the same events, so a commit whose answer was lost
is found written (NO_STREAM refused) instead of written twice. A batch Postgres refuses
for what it holds is written log by log, and a log refused alone is dropped and
counted: one bad log never holds back the others.

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
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
from uuid6 import uuid7

from lathe.inference.v1 import events_pb2 as ev
from libs.db import transaction
from libs.db.errors import database_failure
from libs.eventstore import NO_STREAM, EventMetadata, EventStore, NewEvent, WrongExpectedVersion
from services.inference.events import CATALOG, predictions_stream
from services.inference.store.decisions import insert_decisions

_log = logging.getLogger(__name__)
_BUILD_SLICE = 16
"""Logs built per turn of the event loop at a flush (~20-40 us each)."""
_BATCH_LOGS = 1000
_RETRY_MAX_S = 5.0
"""Longest wait between two tries while Postgres is away (doubling from the interval):
requests keep waking the writer, and one try per request would flood a recovering
Postgres with connection attempts."""

LogSource = ev.PredictionLogged | Callable[[], ev.PredictionLogged]
"""A log, or its builder (called at the flush, off the response's path)."""


@dataclass(eq=False, slots=True)
class _Entry:
    source: LogSource
    traceparent: str
    holds: int
    """Request rows released once this log is built (its request's last log)."""


@dataclass(eq=False)
class _Batch:
    """Built logs and their events: written as one stream, retried as that same stream."""

    stream: str
    messages: list[ev.PredictionLogged]
    events: list[NewEvent]


class PredictionLogger:
    def __init__(
        self,
        store: EventStore,
        *,
        sample_rate: float,
        capacity: int,
        max_request_rows: int = 100_000,
        flush_rows: int = 500,
        flush_interval_s: float = 0.2,
    ) -> None:
        self._store = store
        self.sample_rate = sample_rate
        self._capacity = capacity
        self._max_request_rows = max_request_rows
        self._flush_rows = flush_rows
        self._interval_s = flush_interval_s
        self._away_since: float | None = None
        """When the current Postgres outage began (monotonic), as this writer saw it."""
        self._buffer: deque[_Entry] = deque()
        self._unwritten: deque[_Batch] = deque()
        """Built batches not known to be written yet, oldest first."""
        self._unwritten_logs = 0
        self._held_rows = 0
        self._wake = asyncio.Event()
        self.dropped = 0
        self.written = 0

    def offer(self, message: LogSource, traceparent: str = "") -> bool:
        """Buffer a log (or a builder holding nothing big) with the trace of the request
        that made it; False when dropped."""
        return self.offer_request([message], traceparent, request_rows=0)

    def offer_request(
        self, sources: Sequence[LogSource], traceparent: str, *, request_rows: int
    ) -> bool:
        """Buffer all of one request's logs, or none (False, all counted dropped): their
        builders hold the request's ``request_rows`` rows until the last one is built."""
        count = len(sources)
        held = self._held_rows
        if self.pending + count > self._capacity or (
            request_rows and held and held + request_rows > self._max_request_rows
        ):
            self.dropped += count
            return False
        for k, source in enumerate(sources):
            holds = request_rows if k == count - 1 else 0
            self._buffer.append(_Entry(source, traceparent, holds))
        self._held_rows += request_rows
        if len(self._buffer) >= self._flush_rows:
            self._wake.set()
        return True

    def flush_soon(self) -> None:
        """Write what is buffered now instead of at the next interval (for a caller that
        waits for logs to land, e.g. a test; the flush loop stays the only writer)."""
        self._wake.set()

    @property
    def pending(self) -> int:
        """Logs waiting to be written (buffered, or built and not yet written)."""
        return len(self._buffer) + self._unwritten_logs

    async def run(self, stop: asyncio.Event) -> None:
        retry_in = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                if retry_in:  # Postgres away: requests' wake-ups wait for the next try
                    await asyncio.wait_for(stop.wait(), retry_in)
                else:
                    await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            if await self.flush():
                retry_in = 0.0
            else:
                retry_in = min(max(2 * retry_in, self._interval_s), _RETRY_MAX_S)
        await self.flush()
        if self.pending:
            _log.error(
                "%d prediction logs lost at shutdown: Postgres did not take them", self.pending
            )
            self.dropped += self.pending

    async def flush(self) -> bool:
        """Write what is buffered; False when it returned early (keeping what is left)
        because Postgres is away."""
        while self._unwritten or self._buffer:
            if not self._unwritten:
                batch = await self._next_batch()
                if batch is None:
                    continue
                self._unwritten.append(batch)
                self._unwritten_logs += len(batch.messages)
            if not await self._write_oldest():
                return False
        if self._away_since is not None:
            _log.warning(
                "Postgres takes prediction logs again after %.1f s",
                time.monotonic() - self._away_since,
            )
            self._away_since = None
        return True

    async def _next_batch(self) -> _Batch | None:
        taken = [self._buffer.popleft() for _ in range(min(len(self._buffer), _BATCH_LOGS))]
        built: list[tuple[ev.PredictionLogged, str]] = []
        for start in range(0, len(taken), _BUILD_SLICE):
            if start:
                await asyncio.sleep(0)  # let requests in between slices: no long stall
            for entry in taken[start : start + _BUILD_SLICE]:
                message = self._built(entry)
                if message is not None:
                    built.append((message, entry.traceparent))
        return _batch(built) if built else None

    def _built(self, entry: _Entry) -> ev.PredictionLogged | None:
        self._held_rows -= entry.holds
        if isinstance(entry.source, ev.PredictionLogged):
            return entry.source
        try:
            return entry.source()
        except Exception:  # a log that cannot be built is dropped, never fails the flush
            self.dropped += 1
            _log.exception("could not build a prediction log; dropped")
            return None

    async def _write_oldest(self) -> bool:
        """Write the oldest unwritten batch; False when Postgres is away (kept for later)."""
        batch = self._unwritten[0]
        try:
            async with transaction(self._store.pool) as conn:
                await self._store.append(
                    batch.stream, batch.events, expected_version=NO_STREAM, conn=conn
                )
                await insert_decisions(conn, batch.messages, [e.payload for e in batch.events])
        except WrongExpectedVersion:
            # Its stream exists: an earlier try committed and only the answer was lost.
            self._settle(batch, written=True)
        except Exception as exc:
            if _unreachable(exc):
                if self._away_since is None:  # once per outage, not once per try
                    self._away_since = time.monotonic()
                    _log.warning(
                        "could not write %d prediction logs (%s); holding them and retrying "
                        "with backoff (up to %.0f s apart)",
                        self.pending,
                        exc,
                        _RETRY_MAX_S,
                    )
                return False
            self._refused(batch, exc)
        else:
            self._settle(batch, written=True)
        return True

    def _refused(self, batch: _Batch, error: Exception) -> None:
        """Postgres refused what ``batch`` holds (not an outage): write its logs one by one,
        so that only the log it refuses alone is dropped."""
        self._settle(batch, written=False)
        if len(batch.messages) == 1:
            self.dropped += 1
            _log.error(
                "Postgres refused the prediction log of decision %r (%s); dropped",
                batch.messages[0].decision_id[:80],
                error,
            )
            return
        _log.warning(
            "Postgres refused a batch of %d prediction logs (%s); writing them one by one",
            len(batch.messages),
            error,
        )
        singles = [
            _Batch(predictions_stream(str(uuid7())), [message], [event])
            for message, event in zip(batch.messages, batch.events, strict=True)
        ]
        self._unwritten.extendleft(reversed(singles))
        self._unwritten_logs += len(singles)

    def _settle(self, batch: _Batch, *, written: bool) -> None:
        self._unwritten.popleft()
        self._unwritten_logs -= len(batch.messages)
        if written:
            self.written += len(batch.messages)


def _batch(built: list[tuple[ev.PredictionLogged, str]]) -> _Batch:
    events = [
        CATALOG.new_event(
            message,
            EventMetadata(
                actor="inference", correlation_id=message.decision_id, traceparent=traceparent
            ),
        )
        for message, traceparent in built
    ]
    stream = predictions_stream(str(uuid7()))
    return _Batch(stream, [message for message, _ in built], events)


def _unreachable(error: Exception) -> bool:
    """Postgres away or too slow (retry the same batch later), rather than refusing it."""
    return database_failure(error) is not None or isinstance(
        error, OSError | TimeoutError | asyncpg.InterfaceError
    )
