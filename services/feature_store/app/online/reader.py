"""Serving the latest feature values for many entities in one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.online import reply
from services.feature_store.app.online.replica import OnlineReplica
from services.feature_store.app.online.vectors import VectorIndex
from services.feature_store.app.online.windows import WindowReader
from services.feature_store.domain.definitions.read_plan import Definitions, ReadPlan
from services.feature_store.domain.keys import check_key_columns, join_keys_of, request_keys
from services.feature_store.domain.serving.rows import ServingRow, ViewTables, epoch_us, merged
from services.feature_store.store import online


class OnlineReader:
    def __init__(self, pool: asyncpg.Pool, cache: DefinitionsCache, replica: OnlineReplica) -> None:
        self._pool = pool
        self._cache = cache
        self._replica = replica
        self._windows = WindowReader(pool)

    async def read(
        self,
        *,
        feature_service: str,
        references: tuple[str, ...],
        entities: Mapping[str, m.RepeatedValue],
        request_data: Mapping[str, m.RepeatedValue],
    ) -> bytes:
        """A GetOnlineFeaturesResponse, serialized (see ``wire``)."""
        plan = await self._cache.plan(feature_service, references)
        rows = _row_count(entities, request_data)
        _check_entities(plan, entities, self._cache.definitions)
        keys_of: dict[str, list[str]] = {}  # views of one entity share its keys
        for read in plan.views:
            if read.join_key not in keys_of:
                keys_of[read.join_key] = request_keys(entities, read.join_keys)
        keys_by_view = [keys_of[read.join_key] for read in plan.views]
        now = datetime.now(UTC)
        # Where rows come from is decided once, before any await: entries built from rows
        # read from Postgres while the replica finished loading would never be dropped.
        held = self._replica.tables
        ready = self._ready(plan) if feature_service and held is not None else {}
        tables = await self._stored(plan, keys_by_view, now, held)
        return reply.encode(plan, keys_by_view, tables, request_data, rows, now, ready)

    def _ready(self, plan: ReadPlan) -> dict[int, VectorIndex]:
        """The replica's ready parts for a feature service's plan, by run (ADR 0010).

        Only feature services get them: they are the stable selections models read,
        while ad-hoc feature lists would each build an index of every entity.
        """
        ready = {}
        for run in reply.ready_runs(plan):
            index = self._replica.vectors.index_for(run.shape)
            if index is not None:
                ready[run.first] = index
        return ready

    async def _stored(
        self,
        plan: ReadPlan,
        keys_by_view: list[list[str]],
        now: datetime,
        held: ViewTables | None,
    ) -> ViewTables:
        """The rows of every view the plan reads: from memory, Postgres, or stream tiles."""
        stored_views, aggregated = [], []  # stream views: window values computed from tiles
        for read, keys in zip(plan.views, keys_by_view, strict=True):
            if not read.stored:
                spec = self._windows.spec(read.view, read.join_keys)
                aggregated.extend((spec, key) for key in dict.fromkeys(keys))
            else:
                stored_views.append(read.key)
        if not aggregated:
            return await self._latest(stored_views, keys_by_view, held)
        tables, windows = await asyncio.gather(
            self._latest(stored_views, keys_by_view, held), self._windows.read(aggregated, now)
        )
        return {**tables, **windows}

    async def _latest(
        self,
        views: list[tuple[str, int]],
        keys_by_view: list[list[str]],
        held: ViewTables | None,
    ) -> ViewTables:
        """Rows from the replica's ``held`` tables, or from Postgres when it has none."""
        if held is not None:
            return {view: held[view] for view in views if view in held}  # absent: no rows
        all_keys = [key for keys in keys_by_view for key in keys]
        found = await online.read_latest(self._pool, views, all_keys)
        now_us = epoch_us(datetime.now(UTC))
        tables: ViewTables = {}
        for view, rows in found.items():
            table = tables[view] = {}
            for key, stored in rows.items():
                head = None
                for r in stored:
                    head = merged(
                        head, ServingRow(r.row, r.event_time, r.features, r.created_time), now_us
                    )
                table[key] = head  # type: ignore[assignment]  # every key has a row
        return tables


def _check_entities(
    plan: ReadPlan, entities: Mapping[str, m.RepeatedValue], definitions: Definitions
) -> None:
    """``entities`` has a column for each join key the plan's views read (INVALID_ARGUMENT
    naming a missing one) and none that is no entity's join key (INVALID_ARGUMENT naming
    it: a mistyped or invented key part). A join key of another entity is let through: a
    caller scoring several models at once (inference's arms and sampled shadows) sends the
    keys of all of them while one call reads some (ADR 0023). The key sets are worked out
    once per cached plan; the usual request costs one set comparison."""
    needed = plan.memo.get("join_keys")
    if needed is None:
        needed = plan.memo["join_keys"] = frozenset(
            key for read in plan.views for key in read.join_keys
        )
    if not plan.views or set(entities) == needed:
        return
    others = plan.memo.get("other_join_keys")
    if others is None:
        others = plan.memo["other_join_keys"] = frozenset(
            key for entity in definitions.entities.values() for key in join_keys_of(entity)
        )
    in_order = dict.fromkeys(key for read in plan.views for key in read.join_keys)
    check_key_columns(entities, in_order, "entities", others=others)


def _row_count(
    entities: Mapping[str, m.RepeatedValue], request_data: Mapping[str, m.RepeatedValue]
) -> int:
    lengths = {len(c.values) for c in (*entities.values(), *request_data.values())}
    if not entities:
        raise InvalidArgument("entities is empty: pass the join key values of the rows to serve")
    if len(lengths) != 1:
        raise InvalidArgument("every entities and request_data column needs one value per row")
    rows = lengths.pop()
    if rows == 0:
        raise InvalidArgument("entities has no rows")
    if rows > 10_000:
        raise InvalidArgument("at most 10,000 entity rows per call; split the request")
    return rows
