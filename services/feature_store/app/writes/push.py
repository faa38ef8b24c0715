"""PushFeatures: precomputed values written straight into a push-source view."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.db import transaction
from libs.errors import FailedPrecondition
from libs.eventstore import ClientRequest, EventMetadata, RequestLog
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.writes.writer import FeatureWriter
from services.feature_store.domain.keys import join_keys_of
from services.feature_store.domain.writes import push_rows


class Pusher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        cache: DefinitionsCache,
        writer: FeatureWriter,
        requests: RequestLog,
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._writer = writer
        self._requests = requests

    async def push(
        self,
        view_name: str,
        columns: Mapping[str, m.RepeatedValue],
        metadata: EventMetadata,
        request: ClientRequest | None = None,
    ) -> rr.PushFeaturesResponse:
        """Write the rows; what was written. A retry of an applied ``request`` writes
        nothing and gets the first attempt's counts."""
        view = await self._cache.view(view_name)
        if view.WhichOneof("source") != "push_source":
            raise FailedPrecondition(
                f"feature view {view_name!r} has a {view.WhichOneof('source')}; only push-source "
                "views accept PushFeatures (batch views are filled by Materialize)"
            )
        rows = push_rows(view, join_keys_of(self._cache.definitions.entities[view.entity]), columns)

        async def write(conn: asyncpg.Connection) -> rr.PushFeaturesResponse:
            result = await self._writer.write(
                conn, view, rows, created_time=datetime.now(UTC), metadata=metadata
            )
            return rr.PushFeaturesResponse(
                rows_written=result.written, rows_quarantined=result.quarantined
            )

        async with transaction(self._pool) as conn:
            response = await self._requests.once(
                conn, request, rr.PushFeaturesResponse, lambda: write(conn)
            )
        await self._writer.served()
        return response
