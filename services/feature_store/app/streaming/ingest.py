"""Stream ingestion: raw business events from JetStream into tiles, exactly once.

A durable consumer reads ``<namespace>.ingest.>`` (stream ``<NAMESPACE>_INGEST``). For
each event, inside the consumer's Postgres transaction (which also records the event as
processed): log it raw — a replay finds it logged and stops there — then, for every
applied version of every stream view of its source, parse it, reject what cannot count,
lock its tile and merge it in. Rejections are counted per view and reason, never raised:
a poison message is acknowledged like any other and cannot block the stream.

Views applied after an event was ingested do not see it until they are backfilled
(backfill.py): the raw log keeps every event for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import asyncpg

from libs.db import transaction
from libs.eventstore import ConsumerSpec, DurableConsumer, RawDelivery, raw_decoder
from libs.messaging import EventStreamNames, ensure_stream
from libs.runtime import ServiceContext
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.domain.definitions.read_plan import Definitions
from services.feature_store.domain.names import NAME_PATTERN
from services.feature_store.domain.streaming.aggregation import (
    StreamEvent,
    StreamViewSpec,
    floor_tile,
    settled,
    to_us,
)
from services.feature_store.domain.streaming.events import (
    BAD_SUBJECT,
    EventRejected,
    decode_payload,
    parse_event,
)
from services.feature_store.domain.streaming.views import (
    folded_states,
    merged_states,
    prunable_before,
    rollups_prunable_before,
    stream_views,
)
from services.feature_store.store import stream_events, tiles

_log = logging.getLogger(__name__)
CONSUMER = "feature-store-stream-aggregations"
_SOURCE_RE = re.compile(NAME_PATTERN)
_RETRY_S = (0.2, 1.0, 5.0)
_FIRST_PRUNE_S = 600.0
_PRUNE_EVERY_S = 3600.0


def ingest_streams(namespace: str) -> EventStreamNames:
    """Subjects ``<namespace>.ingest.<source>`` in the stream ``<NAMESPACE>_INGEST``."""
    return EventStreamNames(namespace, "ingest")


async def prune_tiles(pool: asyncpg.Pool, definitions: Definitions, now_us: int) -> int:
    """Delete every stream view's tiles past ``prunable_before``; how many.

    Point-in-time aggregates and backfills read the raw-event log, not tiles, so
    nothing else needs them.
    """
    deleted = 0
    for specs in stream_views(definitions).values():
        for spec in specs:
            deleted += await tiles.prune_tiles(
                pool,
                spec.view,
                spec.version,
                prunable_before(spec, now_us),
                rollups_prunable_before(spec, now_us),
            )
    return deleted


_FOLD_ENTITIES = 500


async def fold_lifetimes(pool: asyncpg.Pool, definitions: Definitions, now: datetime) -> int:
    """Merge every pending lifetime row whose tile has started into its entity's lifetime
    state and delete it; how many. Reads give the same values before and after (they
    merge due pending rows themselves); this only keeps the pending table small.

    Each slice holds its source's shared ingestion lock (a backfill replacing these rows
    waits) and locks lifetime rows before pending rows, as ingestion does.
    """
    now_us = to_us(now)
    folded = 0
    for specs in stream_views(definitions).values():
        for spec in specs:
            if not spec.lifetime:
                continue
            until = floor_tile(now_us, spec.tile_us)
            while True:
                async with transaction(pool) as conn:
                    await stream_events.lock_source(conn, spec.source, shared=True)
                    entities = await tiles.due_pending(
                        conn, spec.view, spec.version, until, _FOLD_ENTITIES
                    )
                    if not entities:
                        break
                    refs = [(spec.view, spec.version, key) for key in entities]
                    locked = await tiles.lock_lifetimes(conn, refs)
                    taken = await tiles.take_due_pending(
                        conn, spec.view, spec.version, entities, until
                    )
                    await tiles.write_lifetimes(
                        conn, folded_states(locked, spec.view, spec.version, taken)
                    )
                    folded += len(taken)
    return folded


class StreamIngestor:
    """The feature store's background task that consumes business events."""

    def __init__(self, context: ServiceContext, cache: DefinitionsCache) -> None:
        self._context = context
        self._cache = cache
        self._names = ingest_streams(context.settings.namespace)
        self._indexed: Definitions | None = None
        self._by_source: dict[str, list[StreamViewSpec]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Ensure the ingest stream exists, then consume until ``stop``."""
        if not await self._prepare(stop):
            return
        pruning = asyncio.create_task(self._prune_periodically(stop))
        consumer: DurableConsumer[RawDelivery] = DurableConsumer(
            ConsumerSpec(
                name=CONSUMER, stream=self._names.stream, filter_subject=self._names.all_subjects
            ),
            js=self._context.js,
            store=self._context.store,
            batch_handler=self.handle,
            decoder=raw_decoder,
        )
        try:
            await consumer.run(stop)
        finally:
            pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruning

    async def _prune_periodically(self, stop: asyncio.Event) -> None:
        """Tiles grow with time; prune the ones no read or event can reach, and raw events
        past their retention (if set), hourly (first after a few minutes, so a restart
        loop does not prune in a loop)."""
        delay = _FIRST_PRUNE_S
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            delay = _PRUNE_EVERY_S
            now = datetime.now(UTC)
            retention_days = self._context.settings.feature_store_raw_event_retention_days
            try:
                deleted = await prune_tiles(self._context.pool, self._cache.definitions, to_us(now))
                if deleted:
                    _log.info("pruned %d stream tiles and rollups past every window", deleted)
                folded = await fold_lifetimes(self._context.pool, self._cache.definitions, now)
                if folded:
                    _log.info("folded %d pending rows into lifetime states", folded)
                if retention_days:
                    before = now - timedelta(days=retention_days)
                    deleted = await stream_events.prune_events(self._context.pool, before)
                    if deleted:
                        _log.info("pruned %d raw events past %d days", deleted, retention_days)
            except (asyncpg.PostgresError, OSError) as exc:
                _log.warning("could not prune stream tiles or raw events (%r)", exc)

    async def _prepare(self, stop: asyncio.Event) -> bool:
        """The stream exists and definitions are loaded (else pending events find no view)."""
        settings = self._context.settings
        attempt = 0
        while not stop.is_set():
            try:
                await ensure_stream(
                    self._context.js,
                    self._names.stream,
                    [self._names.all_subjects],
                    duplicate_window_s=settings.duplicate_window_s,
                    replicas=settings.stream_replicas,
                )
                await self._cache.refresh()
                return True
            except Exception as exc:  # broker or database restarting: retry, the host stays up
                delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
                attempt += 1
                _log.warning("stream ingestion cannot start yet (%r); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        return False

    async def handle(self, deliveries: list[RawDelivery], conn: asyncpg.Connection) -> None:
        """Apply a batch of events in the consumer's transaction (see the module docstring):
        a few statements per batch, not per event."""
        by_source: dict[str, list[RawDelivery]] = defaultdict(list)
        for delivery in deliveries:
            source = self._source_of(delivery.subject)
            try:
                if source is None:
                    raise EventRejected(
                        BAD_SUBJECT, f"subject {delivery.subject!r} names no source"
                    )
                decode_payload(delivery.data)
            except EventRejected as exc:
                where = source or delivery.subject[-200:]
                _log.warning("ingest %s: dropped event %s: %s", where, delivery.event_id, exc)
                await stream_events.count_rejections(conn, where, Counter({("", 0, exc.reason): 1}))
                continue
            by_source[source].append(delivery)
        # Sources in sorted order: with each source's tiles, then rollups, locked sorted,
        # every batch takes its row locks in one global order, so replicas never deadlock.
        for source, batch in sorted(by_source.items()):
            await self._merge(conn, source, batch)

    async def _merge(
        self, conn: asyncpg.Connection, source: str, deliveries: list[RawDelivery]
    ) -> None:
        logged = await stream_events.append_events(
            conn,
            source,
            [
                stream_events.RawEvent(d.event_id, d.stream_sequence, d.arrival_time, d.data)
                for d in deliveries
            ],
        )
        accepted: dict[tiles.TileRef, list[StreamEvent]] = defaultdict(list)
        rolled: dict[tiles.TileRef, list[StreamEvent]] = defaultdict(list)
        lifetimes: dict[tiles.LifetimeRef, list[StreamEvent]] = defaultdict(list)
        pending: dict[tiles.TileRef, list[StreamEvent]] = defaultdict(list)
        rejected = Counter[tuple[str, int, str]]()
        specs = self._views_of(source)
        for delivery in deliveries:
            if delivery.event_id not in logged:
                continue  # logged before: a replay past the consumer's dedupe changes nothing
            payload = decode_payload(delivery.data)
            arrival_us = to_us(delivery.arrival_time)
            for spec in specs:
                try:
                    event = parse_event(
                        spec, payload, arrival_us=arrival_us, sequence=delivery.stream_sequence
                    )
                except EventRejected as exc:
                    _log.debug(
                        "ingest %s: %s v%d rejects an event: %s",
                        source,
                        spec.view,
                        spec.version,
                        exc,
                    )
                    rejected[(spec.view, spec.version, exc.reason)] += 1
                    continue
                view = (spec.view, spec.version, event.entity_key)
                accepted[(*view, floor_tile(event.event_us, spec.tile_us))].append(event)
                if spec.rolls_up:
                    rolled[(*view, floor_tile(event.event_us, spec.rollup_us))].append(event)
                if spec.lifetime and settled(spec, event):
                    lifetimes[view].append(event)
                elif spec.lifetime:
                    pending[(*view, floor_tile(event.event_us, spec.tile_us))].append(event)
        await stream_events.count_rejections(conn, source, rejected)
        # Within a source: sorted tiles, then sorted rollups, lifetime and pending rows (see
        # ``handle`` for the order across sources). Merging is order-free (ADR 0007).
        locked_tiles = await tiles.lock_tiles(conn, sorted(accepted))
        locked_rollups = await tiles.lock_rollups(conn, sorted(rolled))
        locked_lifetimes = await tiles.lock_lifetimes(conn, sorted(lifetimes))
        locked_pending = await tiles.lock_pending(conn, sorted(pending))
        await tiles.write_tiles(conn, merged_states(locked_tiles, accepted))
        await tiles.write_rollups(conn, merged_states(locked_rollups, rolled))
        await tiles.write_lifetimes(conn, merged_states(locked_lifetimes, lifetimes))
        await tiles.write_pending(conn, merged_states(locked_pending, pending))

    def _source_of(self, subject: str) -> str | None:
        prefix = self._names.subject_prefix + "."
        source = subject[len(prefix) :] if subject.startswith(prefix) else ""
        return source if _SOURCE_RE.fullmatch(source) else None

    def _views_of(self, source: str) -> list[StreamViewSpec]:
        definitions = self._cache.definitions
        if definitions is not self._indexed:  # the cache swaps in a new object on refresh
            self._by_source = stream_views(definitions)
            self._indexed = definitions
        return self._by_source.get(source, [])
