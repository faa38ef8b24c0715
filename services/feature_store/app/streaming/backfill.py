"""Backfill: a stream view version's tiles recomputed in batch from the raw-event log.

The computation is domain/streaming/backfill.py's, with the parse and merge streaming
uses; since that merge is exact and independent of order, a backfill
over the events a stream ingested reproduces the streamed tiles identically. Run it after
applying a stream view whose source already has history (views see only events ingested
after they were applied), or after importing historical events into the log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db import transaction
from libs.errors import FailedPrecondition, InvalidArgument, NotFound
from libs.eventstore import ANY_VERSION, ClientRequest, EventMetadata, EventStore, RequestLog
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.domain.keys import join_keys_of
from services.feature_store.domain.names import check_name
from services.feature_store.domain.streaming.aggregation import (
    StreamViewSpec,
    TileKey,
    TileState,
    build_rollups,
    encode_state,
    settled,
    spec_of,
    tile_key,
)
from services.feature_store.domain.streaming.backfill import BackfillResult, accepted_events
from services.feature_store.domain.streaming.events import RawEvent
from services.feature_store.events import CATALOG
from services.feature_store.store import stream_events, tiles

RecordBackfill = Callable[[asyncpg.Connection, BackfillResult], Awaitable[None]]
"""Writes what a backfill did inside its transaction (e.g. appends an event)."""


async def backfill_view(
    pool: asyncpg.Pool, spec: StreamViewSpec, record: RecordBackfill | None = None
) -> BackfillResult:
    """Replace the view version's tiles, rollups and lifetime states with ones recomputed
    from its source's raw log (which makes its rollups complete, ADR 0011), in one
    transaction (``backfill_in``)."""
    async with transaction(pool) as conn:
        return await backfill_in(conn, spec, record)


async def backfill_in(
    conn: asyncpg.Connection, spec: StreamViewSpec, record: RecordBackfill | None = None
) -> BackfillResult:
    """``backfill_view`` in the caller's transaction.

    It holds the source's ingestion lock exclusively: streaming of that source waits (it
    resumes where it was), and no event can be half counted. ``record`` runs in the same
    transaction, so the record and the tiles commit together.
    """
    await stream_events.lock_source(conn, spec.source)
    result, built = BackfillResult(), dict[TileKey, TileState]()
    lifetimes: dict[str, TileState] = {}
    pending: dict[TileKey, TileState] = {}
    async for raw in stream_events.read_events(conn, spec.source):  # streamed, not loaded
        for event in accepted_events(spec, (raw,), result):
            built.setdefault(tile_key(spec, event), TileState()).add(event)
            if spec.lifetime and settled(spec, event):
                lifetimes.setdefault(event.entity_key, TileState()).add(event)
            elif spec.lifetime:
                pending.setdefault(tile_key(spec, event), TileState()).add(event)
    result.tiles_written = len(built)
    await tiles.replace_tiles(
        conn,
        spec.view,
        spec.version,
        {key: encode_state(state) for key, state in built.items()},
        {
            key: encode_state(state)
            for key, state in (build_rollups(spec, built) if spec.rolls_up else {}).items()
        },
        {key: encode_state(state) for key, state in pending.items()},
    )
    await tiles.replace_lifetimes(
        conn,
        spec.view,
        spec.version,
        {entity: encode_state(state) for entity, state in lifetimes.items()},
    )
    await tiles.set_rollups_complete(conn, spec.view, spec.version, spec.rolls_up)
    if record is not None:
        await record(conn, result)
    return result


async def import_events(pool: asyncpg.Pool, source: str, events: Sequence[RawEvent]) -> None:
    """Log historical events of ``source`` (each with its known-at time as arrival_time).

    Events already logged (same event id) are kept as they were. Backfill the source's
    views afterwards to count them.
    """
    check_name(source, "stream source")
    async with transaction(pool) as conn:
        await stream_events.lock_source(conn, source)
        await stream_events.import_events(conn, source, events)


class Backfiller:
    """Backfills by view name, resolving definitions through the serving cache."""

    def __init__(
        self, pool: asyncpg.Pool, store: EventStore, cache: DefinitionsCache, requests: RequestLog
    ) -> None:
        self._pool = pool
        self._store = store
        self._cache = cache
        self._requests = requests

    async def backfill(
        self,
        view_name: str,
        version: int,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> rr.BackfillStreamViewResponse:
        """Backfill one version of a stream view (0: the latest). A retry of an applied
        ``request`` recomputes nothing and gets the first attempt's counts."""
        check_name(view_name, "feature_view")
        if version < 0:
            raise InvalidArgument(f"version must be 0 (the latest) or positive, not {version}")
        try:
            view = self._cache.definitions.view(view_name, version)
        except NotFound:
            await self._cache.refresh()
            view = self._cache.definitions.view(view_name, version)
        if view.WhichOneof("source") != "stream_source":
            raise FailedPrecondition(
                f"feature view {view_name!r} has a {view.WhichOneof('source')}; only stream "
                "views have tiles to backfill (batch views use Materialize)"
            )
        spec = spec_of(view, join_keys_of(self._cache.definitions.entities[view.entity]))

        async def record(conn: asyncpg.Connection, result: BackfillResult) -> None:
            event = events_pb2.StreamViewBackfilled(
                feature_view=view.name,
                version=view.version,
                events_read=result.events_read,
                events_used=result.events_used,
                tiles_written=result.tiles_written,
                rejected=dict(result.rejected),
            )
            await self._store.append(
                f"backfill-{view.name}",
                [CATALOG.new_event(event, metadata)],
                expected_version=ANY_VERSION,
                conn=conn,
            )

        async def run(conn: asyncpg.Connection) -> rr.BackfillStreamViewResponse:
            result = await backfill_in(conn, spec, record)
            return rr.BackfillStreamViewResponse(
                version=view.version,
                events_read=result.events_read,
                events_used=result.events_used,
                tiles_written=result.tiles_written,
                rejected=dict(result.rejected),
            )

        async with transaction(self._pool) as conn:
            return await self._requests.once(
                conn, request, rr.BackfillStreamViewResponse, lambda: run(conn)
            )
