"""Writing feature rows: expectations checked, then the offline log and the online store.

Every path that brings values in (push, batch materialization, stream
aggregation) goes through ``FeatureWriter``, so quality rules and storage are
the same whichever way a value arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import message_pb2 as m
from libs.eventstore import ANY_VERSION, EventMetadata, EventStore
from services.feature_store.app.online.replica import OnlineReplica
from services.feature_store.domain.values import to_python
from services.feature_store.domain.writes import (
    IngestResult,
    IngestRow,
    check_expectations,
    online_rows,
)
from services.feature_store.events import CATALOG
from services.feature_store.store import offline, online, quality


class FeatureWriter:
    def __init__(self, store: EventStore, replica: OnlineReplica) -> None:
        self._store = store
        self._replica = replica

    async def served(self) -> None:
        """After the caller commits ``write``: return once online reads here see it."""
        await self._replica.catch_up()

    async def write(
        self,
        conn: asyncpg.Connection,
        view: m.FeatureView,
        rows: Sequence[IngestRow],
        *,
        created_time: datetime,
        metadata: EventMetadata,
    ) -> IngestResult:
        """Store ``rows`` in one transaction (the caller's); report what happened."""
        kept, held, counts = check_expectations(view, rows)
        await offline.lock_for_append(conn, view)
        await offline.append_rows(
            conn,
            view,
            [
                (
                    r.entity_key,
                    r.event_time,
                    r.created_time or created_time,
                    [to_python(v) for v in r.values],
                )
                for r in kept
            ],
        )
        changed = online_rows(kept, created_time)
        await online.upsert_latest(
            conn,
            view.name,
            view.version,
            [_online(row, created_time) for row in changed.current.values()],
        )
        await online.upsert_pending(
            conn, view.name, view.version, [_online(row, created_time) for row in changed.pending]
        )
        if held:
            await quality.quarantine(
                conn,
                view.name,
                view.version,
                [
                    (
                        row.entity_key,
                        row.event_time,
                        m.FeatureRow(values=row.values).SerializeToString(),
                        broken,
                    )
                    for row, broken in held
                ],
            )
        if counts:
            event = CATALOG.new_event(
                events_pb2.ExpectationViolations(
                    feature_view=view.name,
                    version=view.version,
                    counts=dict(counts),
                    quarantined=bool(held),
                ),
                metadata,
            )
            await self._store.append(
                f"quality-{view.name}", [event], expected_version=ANY_VERSION, conn=conn
            )
        return IngestResult(written=len(kept), quarantined=len(held), violations=counts)


def _online(row: IngestRow, created_time: datetime) -> tuple[str, bytes, datetime, datetime, int]:
    """An online store row: (entity key, FeatureRow bytes, event time, created time, count)."""
    return (
        row.entity_key,
        m.FeatureRow(values=row.values).SerializeToString(),
        row.event_time,
        row.created_time or created_time,
        len(row.values),
    )
