"""Recording deployment events: the aggregate's one write path.

Each write reads the folded state (the read-model row, locked), lets the pure deciders
say what to record, appends with that state's stream version as the expected one and
saves the new folded state, all in the caller's transaction. A concurrent writer makes
the append fail (``WrongExpectedVersion``) and the transaction roll back; news is then
retried on fresh state, and an outcome another replica already reported is simply not
recorded twice.
"""

from __future__ import annotations

import logging

import asyncpg
from google.protobuf.message import Message

from lathe.inference.v1 import events_pb2 as ev
from libs.db import transaction
from libs.eventstore import EventMetadata, EventStore, WrongExpectedVersion
from services.inference.domain import deployment as d
from services.inference.events import CATALOG, deployment_stream
from services.inference.store import deployments as table

_log = logging.getLogger(__name__)


class DeploymentRecorder:
    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def record_news(
        self, conn: asyncpg.Connection, news: d.AliasNews, metadata: EventMetadata
    ) -> list[Message]:
        """Inside the caller's transaction: the events recorded for ``news`` (maybe none)."""
        state = await table.one_locked(conn, news.model_name, news.alias)
        messages = d.decide_news(state, news)
        if messages:
            await self._append(conn, state, messages, metadata)
        return messages

    async def record_news_now(self, news: d.AliasNews, metadata: EventMetadata) -> list[Message]:
        """``record_news`` in a transaction of its own, retried once on a concurrent write."""
        for attempt in range(2):
            try:
                async with transaction(self._store.pool) as conn:
                    return await self.record_news(conn, news, metadata)
            except WrongExpectedVersion:
                if attempt:
                    raise
        return []

    async def record_outcome(
        self,
        model_name: str,
        alias: str,
        revision: int,
        outcome: ev.DeploymentActivated | ev.DeploymentFailed,
        metadata: EventMetadata,
    ) -> bool:
        """Record how loading request ``revision`` ended; False when it is no longer news."""
        try:
            async with transaction(self._store.pool) as conn:
                state = await table.one_locked(conn, model_name, alias)
                messages = d.decide_outcome(state, revision, outcome)
                if not messages:
                    return False
                await self._append(conn, state, messages, metadata)
                return True
        except WrongExpectedVersion:
            return False

    async def _append(
        self,
        conn: asyncpg.Connection,
        state: d.Deployment,
        messages: list[Message],
        metadata: EventMetadata,
    ) -> None:
        events = [CATALOG.new_event(message, metadata) for message in messages]
        result = await self._store.append(
            deployment_stream(state.model_name, state.alias),
            events,
            expected_version=state.stream_version,
            conn=conn,
        )
        for recorded, message in zip(result.events, messages, strict=True):
            state = d.evolve(state, message, recorded.stream_version, recorded.recorded_at)
        await table.save(conn, state)
