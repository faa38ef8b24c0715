"""Registry commands: validate intent, record events, keep projections in step."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from lathe.model_registry.v1 import events_pb2
from libs.db import transaction
from libs.errors import AlreadyExists
from libs.eventstore import NO_STREAM, EventMetadata, EventStore, WrongExpectedVersion
from services.model_registry.events import CATALOG, model_stream
from services.model_registry.store.models import ModelsProjection


@dataclass(frozen=True)
class CreateModel:
    name: str
    description: str
    owner: str
    tags: dict[str, str]


class RegistryCommands:
    """Every state change of the registry goes through here."""

    def __init__(self, pool: asyncpg.Pool, store: EventStore) -> None:
        self._pool = pool
        self._store = store
        self._models = ModelsProjection()

    async def create_model(self, command: CreateModel, metadata: EventMetadata) -> None:
        created = events_pb2.ModelCreated(
            name=command.name,
            description=command.description,
            owner=command.owner,
            tags=command.tags,
        )
        event = CATALOG.new_event(created, metadata)
        async with transaction(self._pool) as conn:
            try:
                result = await self._store.append(
                    model_stream(command.name), [event], expected_version=NO_STREAM, conn=conn
                )
            except WrongExpectedVersion:
                raise AlreadyExists(
                    f"model {command.name!r} exists already; names are never reused, "
                    "so pick another name or register a new version of this model"
                ) from None
            await self._models.apply(conn, result.events[0], created)
