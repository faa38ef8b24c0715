"""Feature-store commands: apply, delete and deprecate definitions, as events.

A batch view is planned and applied only if its source can feed it exactly
(domain/definitions/sources.py): a missing table or column, or a column whose type
would lose information in the declared type, blocks the change with what to fix; a
query source must also be one read-only SELECT, as Postgres judges it (ADR 0022).

Deleting and deprecating are events on the definition's own stream (DefinitionDeleted,
DefinitionDeprecated), under the apply lock like an apply, so "what is in use" is judged
against definitions no concurrent apply is changing.
"""

from __future__ import annotations

import asyncpg

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db import transaction
from libs.db.locks import lock_name, xact_lock
from libs.errors import FailedPrecondition, NotFound
from libs.eventstore import ClientRequest, EventMetadata, EventStore, Recorder, RequestLog
from services.feature_store.domain.definitions.changes import (
    Applied,
    PlannedChange,
    checked_plan,
    users_of,
)
from services.feature_store.domain.definitions.sources import source_problems
from services.feature_store.domain.streaming.aggregation import spec_of
from services.feature_store.events import CATALOG, definition_stream
from services.feature_store.store import sources, tiles
from services.feature_store.store.definitions import DefinitionQueries, DefinitionsProjection, wrap

_APPLY_LOCK = lock_name("feature_store", "apply")


class DefinitionCommands:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        queries: DefinitionQueries,
        requests: RequestLog,
    ) -> None:
        self._pool = pool
        self._store = store
        self._queries = queries
        self._requests = requests
        self._recorder = Recorder(store, CATALOG, DefinitionsProjection())

    async def plan(self, repository: m.FeatureRepository) -> list[PlannedChange]:
        applied = await self._queries.applied()
        changes = checked_plan(repository, applied)
        async with self._pool.acquire() as conn:
            await _check_sources(conn, self._pool, changes, repository, applied)
        return changes

    async def apply(
        self,
        repository: m.FeatureRepository,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> rr.ApplyDefinitionsResponse:
        """Record every change as an event, all or nothing; blocked changes refuse the lot.
        A retry of an applied ``request`` gets the first attempt's changes."""
        async with transaction(self._pool) as conn:
            return await self._requests.once(
                conn,
                request,
                rr.ApplyDefinitionsResponse,
                lambda: self._apply(conn, repository, metadata),
            )

    async def _apply(
        self, conn: asyncpg.Connection, repository: m.FeatureRepository, metadata: EventMetadata
    ) -> rr.ApplyDefinitionsResponse:
        # Applies are rare; one at a time keeps "the latest version" well defined.
        await xact_lock(conn, _APPLY_LOCK)
        applied = await self._queries.applied(conn)
        changes = checked_plan(repository, applied)
        await _check_sources(conn, self._pool, changes, repository, applied)
        blocked = [c.change for c in changes if c.change.blocked]
        if blocked:
            lines = [f"{c.kind} {c.name}: {'; '.join(c.details)}" for c in blocked]
            raise FailedPrecondition("nothing was applied: " + " | ".join(lines))
        for planned in changes:
            if not planned.records:
                continue
            kind, name = planned.change.kind, planned.change.name
            stream = definition_stream(kind, name)
            await self._recorder.record(
                conn,
                stream,
                [wrap(kind, planned.definition)],
                expected_version=await self._store.stream_version(stream, conn=conn),
                metadata=metadata,
            )
            definition = planned.definition
            if isinstance(definition, m.FeatureView) and definition.HasField("stream_source"):
                # A version with no tiles yet gets every event in its rollups too; one
                # that starts rolling up with tiles must be backfilled first (ADR 0011).
                rolls_up = spec_of(definition, "").rolls_up
                await tiles.set_rollups_complete(
                    conn, definition.name, definition.version, rolls_up, unless_tiles=True
                )
        return rr.ApplyDefinitionsResponse(changes=[c.change for c in changes])

    async def delete(
        self,
        kind: str,
        name: str,
        reason: str,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> rr.DeleteDefinitionResponse:
        """Delete every version of a definition: NotFound if there is none,
        FailedPrecondition naming what uses it. A retry of an applied ``request`` gets the
        first attempt's reply."""
        async with transaction(self._pool) as conn:
            return await self._requests.once(
                conn,
                request,
                rr.DeleteDefinitionResponse,
                lambda: self._delete(conn, kind, name, reason, metadata),
            )

    async def _delete(
        self, conn: asyncpg.Connection, kind: str, name: str, reason: str, metadata: EventMetadata
    ) -> rr.DeleteDefinitionResponse:
        await xact_lock(conn, _APPLY_LOCK)
        applied = await self._queries.applied(conn)
        definition = _existing(applied, kind, name)
        users = users_of(kind, name, applied)
        if users:
            raise FailedPrecondition(
                f"{kind} {name!r} is in use by {', '.join(users)}: delete those, or apply "
                "versions of them that no longer select it, first (nothing was deleted)"
            )
        version = getattr(definition, "version", 0)
        event = events_pb2.DefinitionDeleted(
            kind=kind, name=name, last_version=version, reason=reason
        )
        await self._record(conn, kind, name, event, metadata)
        return rr.DeleteDefinitionResponse(last_version=version)

    async def deprecate(
        self,
        kind: str,
        name: str,
        reason: str,
        *,
        lift: bool,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> rr.DeprecateDefinitionResponse:
        """Deprecate a definition with ``reason`` (or lift its deprecation): reads of it
        keep working and carry the reason as a warning."""

        async def deprecate(conn: asyncpg.Connection) -> rr.DeprecateDefinitionResponse:
            await xact_lock(conn, _APPLY_LOCK)
            _existing(await self._queries.applied(conn), kind, name)
            event = events_pb2.DefinitionDeprecated(
                kind=kind, name=name, reason="" if lift else reason, lifted=lift
            )
            await self._record(conn, kind, name, event, metadata)
            return rr.DeprecateDefinitionResponse()

        async with transaction(self._pool) as conn:
            return await self._requests.once(
                conn, request, rr.DeprecateDefinitionResponse, lambda: deprecate(conn)
            )

    async def _record(
        self,
        conn: asyncpg.Connection,
        kind: str,
        name: str,
        event: events_pb2.DefinitionDeleted | events_pb2.DefinitionDeprecated,
        metadata: EventMetadata,
    ) -> None:
        stream = definition_stream(kind, name)
        await self._recorder.record(
            conn,
            stream,
            [event],
            expected_version=await self._store.stream_version(stream, conn=conn),
            metadata=metadata,
        )


def _existing(applied: Applied, kind: str, name: str) -> object:
    definition = applied.of(kind).get(name)
    if definition is None:
        what = kind.replace("_", " ")
        raise NotFound(f"no {what} {name!r} (deleted ones are gone); ListFeatureViews shows views")
    return definition


async def _check_sources(
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    changes: list[PlannedChange],
    repository: m.FeatureRepository,
    applied: Applied,
) -> None:
    """Block every change that records a batch view its source cannot feed exactly
    (missing table or column, a lossy type, a query that is not one read-only SELECT),
    with what to fix as its details. Tables are looked up on ``conn`` (the apply's
    transaction); queries are probed on a connection of their own from ``pool``, in
    read-only transactions that ``conn``'s could not become."""
    entities = {**applied.entities, **{e.name: e for e in repository.entities}}
    for planned in changes:
        view = planned.definition
        if not (
            planned.records
            and isinstance(view, m.FeatureView)
            and view.WhichOneof("source") == "batch_source"
        ):
            continue
        if view.batch_source.query:
            async with pool.acquire() as probe:
                columns, problems = await sources.describe(probe, view.batch_source)
        else:
            columns, problems = await sources.describe(conn, view.batch_source)
        problems = problems or source_problems(view, entities[view.entity], columns)
        if problems:
            planned.change.blocked = True
            planned.change.details.extend(problems)
