"""Recording events and folding them into read models in one transaction."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from google.protobuf.message import Message

from libs.eventstore.catalog import EventCatalog
from libs.eventstore.model import AppendResult, EventMetadata
from libs.eventstore.projection import Projection
from libs.eventstore.store import EventStore


class Recorder:
    """Appends a service's events and applies them to its projection on the same connection.

    Call it inside a transaction so the events and the read model commit together.
    """

    def __init__(self, store: EventStore, catalog: EventCatalog, projection: Projection) -> None:
        self._store = store
        self._catalog = catalog
        self._projection = projection

    async def record(
        self,
        conn: asyncpg.Connection,
        stream_id: str,
        messages: Sequence[Message],
        *,
        expected_version: int,
        metadata: EventMetadata,
    ) -> AppendResult:
        events = [self._catalog.new_event(message, metadata) for message in messages]
        result = await self._store.append(
            stream_id, events, expected_version=expected_version, conn=conn
        )
        for recorded, message in zip(result.events, messages, strict=True):
            await self._projection.apply(conn, recorded, message)
        return result
