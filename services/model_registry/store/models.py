"""The ``models`` read model: kept in step with the log, queried by the API."""

from __future__ import annotations

import json

import asyncpg
from google.protobuf.message import Message

from lathe.model_registry.v1 import events_pb2
from libs.eventstore import RecordedEvent
from services.model_registry.app.views import ModelFilter, ModelPage, ModelView

_INSERT = """
    INSERT INTO model_registry.models
        (name, description, owner, tags, created_at, created_by, stream_version)
    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)"""
_SELECT_ONE = """
    SELECT name, description, owner, tags, created_at, created_by
    FROM model_registry.models WHERE name = $1"""
_SELECT_PAGE = """
    SELECT name, description, owner, tags, created_at, created_by
    FROM model_registry.models
    WHERE name > $1
      AND ($2 = '' OR owner = $2)
      AND ($3 = '' OR tags ? $3)
    ORDER BY name
    LIMIT $4"""


class ModelsProjection:
    """Folds model events into ``model_registry.models``."""

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("DELETE FROM model_registry.models")

    async def apply(self, conn: asyncpg.Connection, event: RecordedEvent, message: Message) -> None:
        if isinstance(message, events_pb2.ModelCreated):
            await conn.execute(
                _INSERT,
                message.name,
                message.description,
                message.owner,
                json.dumps(dict(message.tags), sort_keys=True),
                event.recorded_at,
                event.metadata.actor,
                event.stream_version,
            )


class ModelQueries:
    """Reads of the models projection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, name: str) -> ModelView | None:
        row = await self._pool.fetchrow(_SELECT_ONE, name)
        return _view(row) if row is not None else None

    async def page(self, query: ModelFilter) -> ModelPage:
        rows = await self._pool.fetch(
            _SELECT_PAGE, query.after_name, query.owner, query.tag_key, query.limit + 1
        )
        models = [_view(row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return ModelPage(models, next_cursor=models[-1].name if more else None)


def _view(row: asyncpg.Record) -> ModelView:
    return ModelView(
        name=row["name"],
        description=row["description"],
        owner=row["owner"],
        tags=json.loads(row["tags"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
    )
