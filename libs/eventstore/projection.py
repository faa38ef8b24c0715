"""Projections: read models derived from events, rebuildable from Postgres alone.

A service applies its projections in the same transaction as the append that
records the events (so reads see their own writes), and can rebuild any of
them at any time by replaying its event store from position zero.
"""

from __future__ import annotations

from typing import Protocol

import asyncpg
from google.protobuf.message import Message

from libs.eventstore.catalog import EventCatalog
from libs.eventstore.model import RecordedEvent
from libs.eventstore.store import EventStore


class Projection(Protocol):
    """A read model maintained from events."""

    async def reset(self, conn: asyncpg.Connection) -> None:
        """Delete everything this projection holds."""

    async def apply(self, conn: asyncpg.Connection, event: RecordedEvent, message: Message) -> None:
        """Fold one event into the read model."""


async def rebuild_projection(
    store: EventStore, catalog: EventCatalog, projection: Projection, *, page_size: int = 1000
) -> int:
    """Reset ``projection`` and replay every event into it in one transaction.

    Runs at REPEATABLE READ so the replay sees one consistent snapshot of the
    log; returns the number of events applied.
    """
    applied = 0
    async with store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        await projection.reset(conn)
        position = 0
        while events := await store.read_all(after_position=position, limit=page_size, conn=conn):
            for event in events:
                if event.event_type in catalog:
                    await projection.apply(
                        conn, event, catalog.decode(event.event_type, event.payload)
                    )
                    applied += 1
            position = events[-1].global_position
    return applied
