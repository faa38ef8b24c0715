"""PushFeatures: precomputed values written straight into a push-source view."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from libs.db import transaction
from libs.errors import FailedPrecondition, InvalidArgument
from libs.eventstore import EventMetadata
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.online.reader import entity_key
from services.feature_store.app.writes.writer import FeatureWriter, IngestResult, IngestRow
from services.feature_store.domain.values import coerce

MAX_PUSH_ROWS = 100_000


class Pusher:
    def __init__(self, pool: asyncpg.Pool, cache: DefinitionsCache, writer: FeatureWriter) -> None:
        self._pool = pool
        self._cache = cache
        self._writer = writer

    async def push(
        self, view_name: str, columns: Mapping[str, m.RepeatedValue], metadata: EventMetadata
    ) -> IngestResult:
        view = await self._cache.view(view_name)
        if view.WhichOneof("source") != "push_source":
            raise FailedPrecondition(
                f"feature view {view_name!r} has a {view.WhichOneof('source')}; only push-source "
                "views accept PushFeatures (batch views are filled by Materialize)"
            )
        join_key = self._cache.definitions.entities[view.entity].join_key
        rows = _rows(view, join_key, columns)
        async with transaction(self._pool) as conn:
            result = await self._writer.write(
                conn, view, rows, created_time=datetime.now(UTC), metadata=metadata
            )
        await self._writer.served()
        return result


def _rows(
    view: m.FeatureView, join_key: str, columns: Mapping[str, m.RepeatedValue]
) -> list[IngestRow]:
    features = {f.name: (i, f.type) for i, f in enumerate(view.features)}
    unknown = set(columns) - set(features) - {join_key, "event_time"}
    if unknown:
        raise InvalidArgument(
            f"columns {sorted(unknown)} are not features of {view.name!r}; "
            f"it has {sorted(features)}"
        )
    for required in (join_key, "event_time"):
        if required not in columns:
            raise InvalidArgument(f"columns needs {required!r}")
    count = len(columns[join_key].values)
    if any(len(c.values) != count for c in columns.values()):
        raise InvalidArgument("every column needs the same number of values (one per row)")
    if not 0 < count <= MAX_PUSH_ROWS:
        raise InvalidArgument(f"push 1 to {MAX_PUSH_ROWS} rows per call, not {count}")
    rows = []
    for r in range(count):
        stamp = columns["event_time"].values[r]
        if stamp.WhichOneof("kind") != "timestamp_value":
            raise InvalidArgument(f"event_time of row {r} must be a timestamp")
        values = [m.Value() for _ in view.features]
        for name, (index, value_type) in features.items():
            if name in columns:
                values[index] = coerce(columns[name].values[r], value_type, f"{name} of row {r}")
        rows.append(
            IngestRow(
                entity_key=entity_key(columns[join_key].values[r], join_key),
                event_time=stamp.timestamp_value.ToDatetime(tzinfo=UTC),
                values=values,
            )
        )
    return rows
