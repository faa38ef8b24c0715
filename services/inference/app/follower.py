"""Following the registry's aliases: its events as they happen, and ResolveAlias at start.

``AliasFollower.handle`` is the handler of a durable JetStream consumer of the registry's
``alias.*`` events: each AliasSet / AliasDeleted of a followed alias becomes a deployment
request (or removal) recorded in the same transaction that marks the registry event
processed, so it takes effect exactly once whichever replica receives it.

``reconcile`` runs when a process starts: it asks the registry (``ResolveAlias``) where
every followed alias of every model points now and records what the log did not say,
so an event lost while no replica ran (or a stream that was purged) cannot leave a
stale version serving. News is ordered by the registry's alias time, so the two paths
never undo each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg

from lathe.model_registry.v1 import events_pb2 as registry_events
from libs.errors import Unavailable
from libs.eventstore import DeliveredEvent, EventMetadata
from services.inference.app.deployments import DeploymentRecorder
from services.inference.domain.deployment import AliasNews
from services.inference.store import deployments as table
from services.inference.store.registry import RegistryGateway

_log = logging.getLogger(__name__)


class AliasFollower:
    def __init__(
        self,
        recorder: DeploymentRecorder,
        registry: RegistryGateway,
        pool: asyncpg.Pool,
        *,
        aliases: Iterable[str],
        models: frozenset[str],
    ) -> None:
        self._recorder = recorder
        self._registry = registry
        self._pool = pool
        self._aliases = tuple(aliases)
        self._models = models

    def follows(self, model_name: str, alias: str) -> bool:
        return alias in self._aliases and (not self._models or model_name in self._models)

    async def handle(self, delivered: DeliveredEvent, conn: asyncpg.Connection) -> None:
        message = delivered.message
        if not isinstance(message, registry_events.AliasSet | registry_events.AliasDeleted):
            return
        if not self.follows(message.model_name, message.alias):
            return
        version = message.version if isinstance(message, registry_events.AliasSet) else 0
        share = message.traffic_share if isinstance(message, registry_events.AliasSet) else 0.0
        news = AliasNews(
            model_name=message.model_name,
            alias=message.alias,
            version=version,
            traffic_share=share,
            alias_time=delivered.event.recorded_at,
            source="alias_event",
            registry_event_id=str(delivered.event_id),
        )
        metadata = EventMetadata(
            correlation_id=delivered.event.metadata.correlation_id,
            causation_id=str(delivered.event_id),
            actor=delivered.event.metadata.actor or "model-registry",
            traceparent=delivered.event.metadata.traceparent,
        )
        recorded = await self._recorder.record_news(conn, news, metadata)
        if recorded:
            _log.info(
                "alias %s/%s -> v%d: deployment requested", news.model_name, news.alias, version
            )

    async def reconcile(self) -> int:
        """Record what the registry says that the log has not; how many changes."""
        changed = 0
        known = {(s.model_name, s.alias) for s in await table.all_deployments(self._pool)}
        names = set()
        async for name in self._registry.model_names():
            if not self._models or name in self._models:
                names.add(name)
        pairs = {(n, a) for n in names for a in self._aliases} | {
            (m, a) for m, a in known if self.follows(m, a)
        }
        for model_name, alias in sorted(pairs):
            target = await self._registry.resolve(model_name, alias)
            if target is None:
                if (model_name, alias) not in known:
                    continue
                state = await table.one(self._pool, model_name, alias)
                if state.removed:
                    continue
                news = AliasNews(model_name, alias, 0, 0.0, _after(state.alias_time), "reconcile")
            else:
                news = AliasNews(
                    model_name,
                    alias,
                    target.version,
                    target.traffic_share,
                    target.update_time,
                    "reconcile",
                )
            recorded = await self._recorder.record_news_now(
                news, EventMetadata(actor="inference", causation_id="reconcile")
            )
            if recorded:
                changed += 1
                _log.info(
                    "reconciled %s/%s -> v%d (the event log had not said so)",
                    model_name,
                    alias,
                    news.version,
                )
        return changed

    async def run_reconcile(self, stop: asyncio.Event) -> None:
        """A background task: reconcile once the registry answers (retrying until then)."""
        delay = 0.5
        while not stop.is_set():
            try:
                changed = await self.reconcile()
                _log.info("reconciliation done: %d deployment(s) changed", changed)
                return
            except (Unavailable, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # InterfaceError: the connection closed under a transaction (Postgres lost).
                _log.warning("reconciliation waits for the registry or Postgres (%s)", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)


_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def _after(moment: datetime | None) -> datetime:
    """The time to stamp a deletion the registry no longer has a time for, ``moment``
    being the alias time of the last move it told us about.

    On the registry's clock, not this host's: one microsecond after ``moment`` is after
    that move and before any later one the registry commits (its times are Postgres
    commit times, microseconds). This host's clock, ahead of the registry's, would rank
    the deletion after a later AliasSet, which ``decide_news`` would then ignore forever.
    With no time known, the deletion ranks before every time the registry gives.
    """
    return _NO_TIME if moment is None else moment + timedelta(microseconds=1)
