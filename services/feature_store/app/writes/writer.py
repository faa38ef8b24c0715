"""Writing feature rows: expectations checked, then the offline log and the online store.

Every path that brings values in (push, batch materialization, stream
aggregation) goes through ``FeatureWriter``, so quality rules and storage are
the same whichever way a value arrives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import message_pb2 as m
from libs.eventstore import ANY_VERSION, EventMetadata, EventStore
from services.feature_store.app.online.replica import OnlineReplica
from services.feature_store.domain.values import describe, to_python, violated
from services.feature_store.events import CATALOG
from services.feature_store.store import offline, online


@dataclass(frozen=True)
class IngestRow:
    entity_key: str
    event_time: datetime
    values: Sequence[m.Value]
    """In the view's feature order (already typed)."""
    created_time: datetime | None = None
    """When the values became known (None: when they are written)."""


@dataclass
class IngestResult:
    written: int = 0
    quarantined: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    """"feature: rule" -> how many rows broke it."""


def check_expectations(
    view: m.FeatureView, rows: Sequence[IngestRow]
) -> tuple[list[IngestRow], list[tuple[IngestRow, list[str]]], Counter[str]]:
    """Split rows into kept and quarantined (by the view's policy), counting violations."""
    quarantine = view.on_violation == m.VIOLATION_POLICY_QUARANTINE
    rules = [
        (index, f"{feature.name}: {describe(expectation)}", expectation)
        for index, feature in enumerate(view.features)
        for expectation in feature.expectations
    ]
    kept, held, counts = [], [], Counter[str]()
    for row in rows:
        broken = [label for index, label, rule in rules if violated(rule, row.values[index])]
        counts.update(broken)
        if broken and quarantine:
            held.append((row, broken))
        else:
            kept.append(row)
    return kept, held, counts


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
        latest: dict[str, IngestRow] = {}
        for row in kept:
            current = latest.get(row.entity_key)
            if current is None or _order(current, created_time) <= _order(row, created_time):
                latest[row.entity_key] = row
        await online.upsert_latest(
            conn,
            view.name,
            view.version,
            [
                (
                    key,
                    m.FeatureRow(values=row.values).SerializeToString(),
                    row.event_time,
                    row.created_time or created_time,
                    len(row.values),
                )
                for key, row in latest.items()
            ],
        )
        if held:
            await conn.executemany(
                """INSERT INTO feature_store.quarantine
                       (view, version, entity_key, event_time, row, violations)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                [
                    (
                        view.name,
                        view.version,
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


def _order(row: IngestRow, default_created: datetime) -> tuple[datetime, datetime]:
    return row.event_time, row.created_time or default_created
