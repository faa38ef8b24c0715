"""PushFeatures: precomputed values written straight into a push-source view."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from libs.db import transaction
from libs.errors import FailedPrecondition
from libs.eventstore import EventMetadata
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.writes.writer import FeatureWriter
from services.feature_store.domain.writes import IngestResult, push_rows


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
        rows = push_rows(view, join_key, columns)
        async with transaction(self._pool) as conn:
            result = await self._writer.write(
                conn, view, rows, created_time=datetime.now(UTC), metadata=metadata
            )
        await self._writer.served()
        return result
