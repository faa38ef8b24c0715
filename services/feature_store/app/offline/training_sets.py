"""Training sets: labels joined point-in-time with features, bitemporally, as Arrow.

Labels come as an Arrow IPC stream (a column per join key plus ``event_time``,
and any extra columns such as the label) or from a Postgres table. Every view the
selection reads is mirrored up to date into DuckDB, the bitemporal join runs
there (store/pit_join.py), on-demand features are computed row by row with the
same code as online, and the result is identified by the sha256 of its Arrow
IPC bytes — recorded as a DatasetSnapshotCreated event for lineage.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db import quote_ident
from libs.errors import InvalidArgument
from libs.eventstore import ANY_VERSION, EventMetadata, EventStore
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.streaming.history import stream_aggregates_as_of
from services.feature_store.domain.definitions.read_plan import (
    OnDemandColumn,
    ReadPlan,
    StoredColumn,
)
from services.feature_store.domain.names import check_name
from services.feature_store.domain.quality import profile_of_array
from services.feature_store.domain.values import from_python, to_python
from services.feature_store.events import CATALOG
from services.feature_store.store.offline_mirror import OfflineMirror
from services.feature_store.store.pit_join import JoinView, join_sql

MAX_LABEL_ROWS = 20_000_000


@dataclass(frozen=True)
class TrainingSet:
    snapshot: rr.DatasetSnapshot
    arrow_ipc: pa.Buffer
    """The training set as one Arrow IPC stream (sent in chunks)."""


class HistoricalReader:
    def __init__(
        self, pool: asyncpg.Pool, store: EventStore, cache: DefinitionsCache, mirror: OfflineMirror
    ) -> None:
        self._pool = pool
        self._store = store
        self._cache = cache
        self._mirror = mirror

    async def training_set(
        self,
        *,
        feature_service: str,
        references: tuple[str, ...],
        label_source: rr.LabelSource | None,
        entity_rows_arrow: bytes,
        metadata: EventMetadata,
    ) -> TrainingSet:
        plan = await self._cache.plan(feature_service, references)
        join_keys = sorted({read.join_key for read in plan.views})
        if label_source is not None:
            labels = await self._labels_from_table(label_source, join_keys)
        else:
            labels = _labels_from_arrow(entity_rows_arrow, join_keys)
        stored = [i for i, read in enumerate(plan.views) if read.stored]
        # Side by side: Postgres exports one view's new rows while DuckDB loads another's.
        synced = await asyncio.gather(*(self._mirror.sync(plan.views[i].view) for i in stored))
        tables = dict(zip(stored, synced, strict=True))
        joined = await asyncio.to_thread(self._join, plan, labels, tables)
        for index, read in enumerate(plan.views):
            if not read.stored:
                joined = await self._add_stream_aggregates(joined, plan, index)
        joined = _with_on_demand(joined, plan)
        ipc = _to_ipc(joined)
        snapshot = rr.DatasetSnapshot(
            snapshot_id=f"sha256:{hashlib.sha256(ipc).hexdigest()}",
            rows=joined.num_rows,
            feature_names=plan.feature_names,
        )
        await self._record(snapshot, feature_service, _profiles(joined, plan), metadata)
        return TrainingSet(snapshot, ipc)

    def _join(self, plan: ReadPlan, labels: pa.Table, tables: dict[int, str]) -> pa.Table:
        """Labels joined point in time with every stored (non-stream) view, in label order."""
        if not tables:
            return labels.sort_by("row_number")
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
                        _joined_name(plan, StoredColumn(index, i)) for i in range(len(features))
                    ),
                    ttl_us=int(read.ttl_s * 1_000_000),
                )
            )
        name = f"labels_{uuid.uuid4().hex}"
        cursor = self._mirror.db.cursor()
        try:
            cursor.register(name, labels)
            joined = cursor.sql(join_sql(name, labels.column_names, views)).to_arrow_table()
        finally:
            cursor.unregister(name)
            cursor.close()
        return joined

    async def _add_stream_aggregates(
        self, joined: pa.Table, plan: ReadPlan, index: int
    ) -> pa.Table:
        """Append a stream view's window values as of each (label-ordered) row's time."""
        read = plan.views[index]
        values = await stream_aggregates_as_of(
            self._pool,
            read.view,
            read.join_key,
            joined.column(read.join_key),
            joined.column("event_time").cast(pa.timestamp("us", tz="UTC")),
        )
        for i, feature in enumerate(read.view.features):
            joined = joined.append_column(
                _joined_name(plan, StoredColumn(index, i)), values.column(feature.name)
            )
        return joined

    async def _labels_from_table(self, source: rr.LabelSource, join_keys: list[str]) -> pa.Table:
        if len(join_keys) != 1:
            raise InvalidArgument(
                f"these features need several entity keys ({join_keys}); pass entity_rows_arrow "
                "with a column per key instead of a label table"
            )
        parts = source.table.split(".")
        if len(parts) > 2:
            raise InvalidArgument("label_source.table must be 'table' or 'schema.table'")
        table = ".".join(quote_ident(check_name(p, "label_source.table")) for p in parts)
        entity = quote_ident(check_name(source.entity_column, "label_source.entity_column"))
        time_column = quote_ident(
            check_name(source.event_time_column, "label_source.event_time_column")
        )
        extras = [check_name(c, "label_source.columns") for c in source.columns]
        where = []
        for bound, operator in ((source.start_time, ">="), (source.end_time, "<")):
            if bound.seconds or bound.nanos:
                moment = bound.ToDatetime(tzinfo=UTC).isoformat()  # formatted from a Timestamp
                where.append(f"{time_column} {operator} '{moment}'::timestamptz")
        query = (
            f"SELECT {entity}::text AS {quote_ident(join_keys[0])}, "
            f"{time_column} AT TIME ZONE 'UTC' AS event_time"
            + "".join(f", {quote_ident(c)}" for c in extras)
            + f" FROM {table}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
        )
        with tempfile.NamedTemporaryFile(suffix=".csv") as handle:
            try:
                async with self._pool.acquire() as conn:
                    await conn.copy_from_query(query, output=handle.name, format="csv", header=True)
            except asyncpg.PostgresError as exc:
                raise InvalidArgument(f"cannot read label_source {source.table!r}: {exc}") from exc
            labels = await asyncio.to_thread(self._read_csv, handle.name, join_keys[0])
        return _numbered(labels)

    def _read_csv(self, path: str, join_key: str) -> pa.Table:
        cursor = self._mirror.db.cursor()
        try:
            types = "{" + f"'{join_key}': 'VARCHAR', 'event_time': 'TIMESTAMP'" + "}"
            return cursor.sql(
                f"SELECT * FROM read_csv('{path}', header = true, types = {types})"
            ).to_arrow_table()
        finally:
            cursor.close()

    async def _record(
        self,
        snapshot: rr.DatasetSnapshot,
        feature_service: str,
        profiles: list[events_pb2.FeatureProfile],
        metadata: EventMetadata,
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
        await self._store.append(
            f"dataset-{snapshot.snapshot_id.split(':')[-1][:32]}",
            [CATALOG.new_event(event, metadata)],
            expected_version=ANY_VERSION,
        )


def _labels_from_arrow(data: bytes, join_keys: list[str]) -> pa.Table:
    if not data:
        raise InvalidArgument("set label_source or entity_rows_arrow (an Arrow IPC stream)")
    try:
        table = pa.ipc.open_stream(data).read_all()
    except pa.ArrowInvalid as exc:
        raise InvalidArgument(f"entity_rows_arrow is not an Arrow IPC stream: {exc}") from exc
    if table.num_rows > MAX_LABEL_ROWS:
        raise InvalidArgument(f"at most {MAX_LABEL_ROWS} entity rows per call")
    for required in (*join_keys, "event_time"):
        if required not in table.column_names:
            raise InvalidArgument(f"entity_rows_arrow needs a column {required!r}")
    if not pa.types.is_timestamp(table.schema.field("event_time").type):
        raise InvalidArgument("entity_rows_arrow.event_time must be an Arrow timestamp")
    if "row_number" in table.column_names:
        raise InvalidArgument("'row_number' is reserved; rename that column")
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if name == "event_time":
            # DuckDB works in naive UTC here: drop the zone after converting to UTC.
            column = pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
        elif name in join_keys:
            column = pc.cast(column, pa.string())
        columns[name] = column
    return _numbered(pa.table(columns))


def _numbered(table: pa.Table) -> pa.Table:
    return table.append_column("row_number", pa.array(range(table.num_rows), pa.int64()))


def _with_on_demand(joined: pa.Table, plan: ReadPlan) -> pa.Table:
    """Select the requested columns in order, computing on-demand ones row by row."""
    label_columns = [n for n in joined.column_names if "@" not in n and n != "row_number"]
    result = {name: joined.column(name) for name in label_columns}
    if "event_time" in result:
        result["event_time"] = result["event_time"].cast(pa.timestamp("us", tz="UTC"))
    on_demand_values = _run_on_demand(joined, plan) if plan.steps else []
    for name, column in zip(plan.feature_names, plan.columns, strict=True):
        if isinstance(column, StoredColumn):
            result[name] = joined.column(_joined_name(plan, column))
        else:
            assert isinstance(column, OnDemandColumn)
            result[name] = on_demand_values[column.step_index][column.output]
    return pa.table(result)


def _run_on_demand(joined: pa.Table, plan: ReadPlan) -> list[dict[str, pa.Array]]:
    outputs = []
    for step in plan.steps:
        inputs = {}
        for reference, column in step.inputs:
            inputs[reference] = joined.column(_joined_name(plan, column)).to_pylist()
        for request_field in step.view.request_fields:
            if request_field.name not in joined.column_names:
                raise InvalidArgument(
                    f"the entity rows lack {request_field.name!r}, an input of on-demand view "
                    f"{step.view.name!r}"
                )
            inputs[request_field.name] = joined.column(request_field.name).to_pylist()
        produced: dict[str, list[object]] = {f.name: [] for f in step.view.features}
        for row in range(joined.num_rows):
            try:
                result = step.function({name: values[row] for name, values in inputs.items()})
            except Exception as exc:
                raise InvalidArgument(
                    f"on-demand view {step.view.name!r} failed on row {row}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for feature in step.view.features:
                value = from_python(result.get(feature.name), feature.type, step.view.name)
                produced[feature.name].append(to_python(value))
        outputs.append({name: pa.array(values) for name, values in produced.items()})
    return outputs


def _to_ipc(table: pa.Table) -> pa.Buffer:
    """The table as an Arrow IPC stream, left in Arrow's buffer.

    Copying a 1M-row training set (~190 MB) into Python bytes took 0.5-0.8 s here
    (fresh pages); hashing and chunking read the buffer in place.
    """
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=65_536)
    return sink.getvalue()


def _profiles(table: pa.Table, plan: ReadPlan) -> list[events_pb2.FeatureProfile]:
    """Histograms of the numeric features: the reference for later drift checks."""
    profiles = []
    for name in plan.feature_names:
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            present = pc.drop_null(column).to_numpy().astype(float)
            profiles.append(profile_of_array(name, present, column.null_count))
    return profiles


def _joined_name(plan: ReadPlan, column: StoredColumn) -> str:
    """The join's name for a stored feature: distinct across versions of one view."""
    view = plan.views[column.view_index].view
    return f"{view.name}@{view.version}:{view.features[column.feature_index].name}"
