"""Definitions held in memory for serving, refreshed when they change.

The applying process refreshes at once; other replicas poll a cheap generation
number (the newest definition event's position) every couple of seconds, so a
new definition is served everywhere within that interval. Read plans are cached
per selection until the next refresh.

Reads of deprecated definitions (ADR 0022) are counted
(``lathe.feature_store.deprecated_reads``, by definition) and logged once per selection
and definitions generation, so a log is not flooded by a model reading one every call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from opentelemetry import metrics

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import NotFound
from services.feature_store.domain.definitions.read_plan import (
    Definitions,
    ReadPlan,
    index_definitions,
)
from services.feature_store.store.definitions import DefinitionQueries

_log = logging.getLogger(__name__)
_POLL_S = 2.0
_meter = metrics.get_meter(__name__)
_deprecated_reads = _meter.create_counter(
    "lathe.feature_store.deprecated_reads",
    unit="{read}",
    description="Online and offline reads selecting a deprecated definition, by definition",
)


class DefinitionsCache:
    def __init__(self, queries: DefinitionQueries) -> None:
        self._queries = queries
        self._definitions = Definitions()
        self._generation = -1
        self._plans: dict[object, ReadPlan] = {}
        self._lock = asyncio.Lock()

    @property
    def definitions(self) -> Definitions:
        return self._definitions

    async def refresh(self) -> None:
        async with self._lock:
            generation = await self._queries.generation()
            if generation == self._generation:
                return
            self._definitions = index_definitions(
                await self._queries.everything(), await self._queries.deprecations()
            )
            self._plans = {}
            self._generation = generation

    async def watch(self, stop: asyncio.Event) -> None:
        """Background task: pick up definitions applied by other replicas."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _POLL_S)
            try:
                await self.refresh()
            except (asyncpg.PostgresError, OSError) as exc:
                _log.warning("could not refresh feature definitions: %s", exc)

    async def plan(self, feature_service: str, references: tuple[str, ...]) -> ReadPlan:
        """The cached plan for a selection (refreshing once if it names something new)."""
        key = feature_service or references
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = self._make_plan(feature_service, references)
            except NotFound:
                await self.refresh()
                plan = self._make_plan(feature_service, references)
            self._plans[key] = plan
        return plan

    async def deprecations(
        self, feature_service: str, references: tuple[str, ...]
    ) -> tuple[str, ...]:
        """The warnings a read of this selection carries: one line per deprecated
        definition it reads (counted, and logged once per cached plan). Nothing to do, and
        no plan lookup, while nothing is deprecated."""
        if not self._definitions.deprecated:
            return ()
        plan = await self.plan(feature_service, references)
        for line in plan.deprecations:
            _deprecated_reads.add(1, {"definition": line.split(":", 1)[0]})
        if plan.deprecations and not plan.memo.get("deprecations_logged"):
            plan.memo["deprecations_logged"] = True
            _log.warning(
                "a read of %s selects deprecated definitions: %s",
                f"feature service {feature_service!r}" if feature_service else list(references),
                "; ".join(plan.deprecations),
            )
        return plan.deprecations

    async def view(self, name: str) -> m.FeatureView:
        """The latest version of a view (refreshing once if it is new)."""
        try:
            return self._definitions.view(name)
        except NotFound:
            await self.refresh()
            return self._definitions.view(name)

    def _make_plan(self, feature_service: str, references: tuple[str, ...]) -> ReadPlan:
        if feature_service:
            return self._definitions.plan_for_service(feature_service)
        return self._definitions.plan_for_references(list(references))
