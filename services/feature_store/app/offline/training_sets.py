"""Training sets: labels joined point-in-time with features, bitemporally, as Arrow.

Labels come as an Arrow IPC stream (a column per join key plus ``event_time``,
and any extra columns such as the label) or from a Postgres table. Every view the
selection reads is mirrored up to date into DuckDB, the bitemporal join runs
there (store/pit_join.py) on the labels' keys and times only, on-demand features are
computed row by row with the same runner as online, the label columns are put back as
they came, and the result is identified by a digest of its content
(``training.content_id``) — recorded as a DatasetSnapshotCreated event for lineage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import pyarrow as pa

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db import transaction
from libs.eventstore import ANY_VERSION, ClientRequest, EventMetadata, EventStore, RequestLog
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.streaming.event_cache import ParsedEventCache
from services.feature_store.app.streaming.history import stream_aggregates_as_of
from services.feature_store.domain import training
from services.feature_store.domain.definitions.read_plan import ReadPlan, StoredColumn
from services.feature_store.events import CATALOG
from services.feature_store.store.labels import read_label_table
from services.feature_store.store.offline_mirror import OfflineMirror
from services.feature_store.store.pit_join import JoinView


@dataclass(frozen=True)
class TrainingSet:
    snapshot: rr.DatasetSnapshot
    arrow_ipc: pa.Buffer
    """The training set as one Arrow IPC stream (sent in chunks)."""


class HistoricalReader:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        cache: DefinitionsCache,
        mirror: OfflineMirror,
        requests: RequestLog,
        events: ParsedEventCache | None = None,
    ) -> None:
        self._pool = pool
        self._events = ParsedEventCache() if events is None else events
        self._store = store
        self._cache = cache
        self._mirror = mirror
        self._requests = requests

    async def training_set(
        self,
        *,
        feature_service: str,
        references: tuple[str, ...],
        label_source: rr.LabelSource | None,
        entity_rows_arrow: bytes,
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> TrainingSet:
        """The training set, and its DatasetSnapshotCreated event recorded (with a client
        ``request`` id: once, unless a retry's content differs from the first's)."""
        recorded = await self._requests.replay(request, rr.DatasetSnapshot)
        plan = await self._cache.plan(feature_service, references)
        join_keys = sorted({key for read in plan.views for key in read.join_keys})
        composites = sorted({read.join_keys for read in plan.views if len(read.join_keys) > 1})
        if label_source is not None:
            labels = await self._labels_from_table(label_source, join_keys, composites)
        else:
            labels = training.labels_from_arrow(entity_rows_arrow, join_keys, composites)
        stored = [i for i, read in enumerate(plan.views) if read.stored]
        # Side by side: Postgres exports one view's new rows while DuckDB loads another's.
        synced = await asyncio.gather(*(self._mirror.sync(plan.views[i].view) for i in stored))
        views = _join_views(plan, dict(zip(stored, synced, strict=True)))
        if views:
            joined = await asyncio.to_thread(self._mirror.join, labels.keys, views)
        else:
            joined = labels.keys
        for index, read in enumerate(plan.views):
            if not read.stored:
                joined = await self._add_stream_aggregates(joined, plan, index)
        result = training.selected(labels, joined, plan)
        # Both mostly in C with the GIL released: side by side on two cores.
        snapshot_id, arrow_ipc = await asyncio.gather(
            asyncio.to_thread(training.content_id, result),
            asyncio.to_thread(training.to_ipc, result),
        )
        snapshot = rr.DatasetSnapshot(
            snapshot_id=snapshot_id, rows=result.num_rows, feature_names=plan.feature_names
        )
        if recorded is None or recorded != snapshot:
            profiles = training.profiles(result, plan)
            await self._record(snapshot, feature_service, profiles, metadata, request, recorded)
        return TrainingSet(snapshot, arrow_ipc)

    async def _add_stream_aggregates(
        self, joined: pa.Table, plan: ReadPlan, index: int
    ) -> pa.Table:
        """Append a stream view's window values as of each (label-ordered) row's time."""
        read = plan.views[index]
        values = await stream_aggregates_as_of(
            self._pool,
            read.view,
            read.join_keys,
            joined.column(read.join_key),
            joined.column("event_time").cast(pa.timestamp("us", tz="UTC")),
            cache=self._events,
        )
        for i, feature in enumerate(read.view.features):
            joined = joined.append_column(
                training.joined_name(plan, StoredColumn(index, i)), values.column(feature.name)
            )
        return joined

    async def _labels_from_table(
        self, source: rr.LabelSource, join_keys: list[str], composites: list[tuple[str, ...]]
    ) -> training.Labels:
        rows = await read_label_table(self._pool, source, join_keys)
        return training.Labels(
            rows, training.label_keys(rows, join_keys, "label_source", composites)
        )

    async def _record(
        self,
        snapshot: rr.DatasetSnapshot,
        feature_service: str,
        profiles: list[events_pb2.FeatureProfile],
        metadata: EventMetadata,
        request: ClientRequest | None,
        recorded: rr.DatasetSnapshot | None,
    ) -> None:
        service = self._cache.definitions.services.get(feature_service)
        event = events_pb2.DatasetSnapshotCreated(
            snapshot_id=snapshot.snapshot_id,
            feature_service=feature_service,
            feature_service_version=service.version if service is not None else 0,
            feature_names=snapshot.feature_names,
            rows=snapshot.rows,
            profiles=profiles,
        )

        async def append(conn: asyncpg.Connection) -> rr.DatasetSnapshot:
            await self._store.append(
                f"dataset-{snapshot.snapshot_id.split(':')[-1][:32]}",
                [CATALOG.new_event(event, metadata)],
                expected_version=ANY_VERSION,
                conn=conn,
            )
            return snapshot

        async with transaction(self._pool) as conn:
            if recorded is not None:  # a retry whose data changed since: a dataset of its own
                await append(conn)
                return
            first = await self._requests.once(
                conn, request, rr.DatasetSnapshot, lambda: append(conn)
            )
            if first != snapshot:  # a concurrent duplicate recorded other content
                await append(conn)


def _join_views(plan: ReadPlan, tables: dict[int, str]) -> list[JoinView]:
    """What the join reads of each stored view: its timeline (by plan index), features,
    their names in the join and its TTL."""
    views = []
    for index, table in tables.items():
        read = plan.views[index]
        features = tuple(f.name for f in read.view.features)
        views.append(
            JoinView(
                timeline=table,
                join_key=read.join_key,
                features=features,
                outputs=tuple(
                    training.joined_name(plan, StoredColumn(index, i)) for i in range(len(features))
                ),
                ttl_us=int(read.ttl_s * 1_000_000),
            )
        )
    return views
