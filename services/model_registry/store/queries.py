"""Reads of the registry's read models and of its event log (as-of, history)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from lathe.model_registry.v1 import message_pb2
from libs.eventstore import RecordedEvent
from libs.eventstore.store import EVENT_COLUMNS, record_from_row

_MODEL_COLUMNS = "name, description, owner, tags, created_at, created_by, policy, latest_version"


@dataclass(frozen=True)
class AliasState:
    """An alias as the projection holds it; version 0 means deleted."""

    alias: message_pb2.Alias
    stream_version: int


@dataclass(frozen=True)
class LockedModel:
    """A model row held with FOR UPDATE: writers of the model's stream queue behind it."""

    policy: message_pb2.PromotionPolicy
    latest_version: int


class RegistryQueries:
    """Every read the registry serves; one round trip each on the hot paths."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def model(
        self, name: str, conn: asyncpg.Connection | None = None
    ) -> message_pb2.Model | None:
        executor = conn or self._pool
        row = await executor.fetchrow(
            f"SELECT {_MODEL_COLUMNS} FROM model_registry.models WHERE name = $1", name
        )
        if row is None:
            return None
        model = _model(row)
        for alias in await self._live_aliases(executor, [name]):
            model.aliases[alias.name].CopyFrom(alias.alias)
        return model

    async def lock_model(self, conn: asyncpg.Connection, name: str) -> LockedModel | None:
        row = await conn.fetchrow(
            "SELECT policy, latest_version FROM model_registry.models WHERE name = $1 FOR UPDATE",
            name,
        )
        if row is None:
            return None
        return LockedModel(
            message_pb2.PromotionPolicy.FromString(row["policy"]), row["latest_version"]
        )

    async def models_page(
        self, *, after_name: str, owner: str, tag_key: str, limit: int
    ) -> tuple[list[message_pb2.Model], bool]:
        rows = await self._pool.fetch(
            f"""SELECT {_MODEL_COLUMNS} FROM model_registry.models
                WHERE name > $1 AND ($2 = '' OR owner = $2) AND ($3 = '' OR tags ? $3)
                ORDER BY name LIMIT $4""",
            after_name,
            owner,
            tag_key,
            limit + 1,
        )
        models = {row["name"]: _model(row) for row in rows[:limit]}
        for alias in await self._live_aliases(self._pool, list(models)):
            models[alias.model_name].aliases[alias.name].CopyFrom(alias.alias)
        return list(models.values()), len(rows) > limit

    async def version(
        self, model_name: str, version: int, conn: asyncpg.Connection | None = None
    ) -> message_pb2.ModelVersion | None:
        body = await (conn or self._pool).fetchval(
            "SELECT body FROM model_registry.model_versions WHERE model_name = $1 AND version = $2",
            model_name,
            version,
        )
        return message_pb2.ModelVersion.FromString(body) if body is not None else None

    async def registry_id(self) -> str:
        """This registry database's identity (migration 0004)."""
        return str(await self._pool.fetchval("SELECT id FROM model_registry.registry_identity"))

    async def referenced_digests(self) -> set[str]:
        """The sha256 of every artifact of every registered version."""
        digests: set[str] = set()
        async with self._pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor("SELECT body FROM model_registry.model_versions"):
                version = message_pb2.ModelVersion.FromString(row["body"])
                digests.update(artifact.sha256 for artifact in version.artifacts)
        return digests

    async def versions_page(
        self, model_name: str, *, before_version: int, limit: int
    ) -> tuple[list[message_pb2.ModelVersion], bool]:
        rows = await self._pool.fetch(
            """SELECT body FROM model_registry.model_versions
               WHERE model_name = $1 AND version < $2 ORDER BY version DESC LIMIT $3""",
            model_name,
            before_version,
            limit + 1,
        )
        return [message_pb2.ModelVersion.FromString(r["body"]) for r in rows[:limit]], len(
            rows
        ) > limit

    async def alias(
        self, model_name: str, alias: str, conn: asyncpg.Connection | None = None
    ) -> AliasState | None:
        row = await (conn or self._pool).fetchrow(
            """SELECT alias, version, traffic_share, updated_at, updated_by, stream_version
               FROM model_registry.aliases WHERE model_name = $1 AND alias = $2""",
            model_name,
            alias,
        )
        return AliasState(_alias(row), row["stream_version"]) if row is not None else None

    async def aliases_of_version(self, model_name: str, version: int) -> list[str]:
        rows = await self._pool.fetch(
            """SELECT alias FROM model_registry.aliases
               WHERE model_name = $1 AND version = $2 ORDER BY alias""",
            model_name,
            version,
        )
        return [row["alias"] for row in rows]

    async def alias_names_ever(self, model_name: str) -> list[str]:
        """Every alias this model has had, deleted ones included (for its history)."""
        rows = await self._pool.fetch(
            "SELECT alias FROM model_registry.aliases WHERE model_name = $1", model_name
        )
        return [row["alias"] for row in rows]

    async def approvers(
        self, model_name: str, version: int, alias: str, conn: asyncpg.Connection | None = None
    ) -> set[str]:
        rows = await (conn or self._pool).fetch(
            """SELECT approver FROM model_registry.approvals
               WHERE model_name = $1 AND version = $2 AND alias = $3""",
            model_name,
            version,
            alias,
        )
        return {row["approver"] for row in rows}

    async def last_event_as_of(self, stream_id: str, as_of: datetime) -> RecordedEvent | None:
        """The stream's last event recorded at or before ``as_of`` (from the log itself)."""
        row = await self._pool.fetchrow(
            f"""SELECT {EVENT_COLUMNS} FROM model_registry.events
                WHERE stream_id = $1 AND recorded_at <= $2
                ORDER BY stream_version DESC LIMIT 1""",
            stream_id,
            as_of,
        )
        return record_from_row(row) if row is not None else None

    async def events_of_streams(
        self, stream_ids: list[str], *, after_position: int, limit: int
    ) -> list[RecordedEvent]:
        rows = await self._pool.fetch(
            f"""SELECT {EVENT_COLUMNS} FROM model_registry.events
                WHERE stream_id = ANY($1::text[]) AND global_position > $2
                ORDER BY global_position LIMIT $3""",
            stream_ids,
            after_position,
            limit,
        )
        return [record_from_row(row) for row in rows]

    async def _live_aliases(
        self, executor: asyncpg.Pool | asyncpg.Connection, model_names: list[str]
    ) -> list[_NamedAlias]:
        rows = await executor.fetch(
            """SELECT model_name, alias, version, traffic_share, updated_at, updated_by
               FROM model_registry.aliases WHERE model_name = ANY($1::text[]) AND version > 0""",
            model_names,
        )
        return [_NamedAlias(row["model_name"], row["alias"], _alias(row)) for row in rows]


@dataclass(frozen=True)
class _NamedAlias:
    model_name: str
    name: str
    alias: message_pb2.Alias


def _model(row: asyncpg.Record) -> message_pb2.Model:
    model = message_pb2.Model(
        name=row["name"],
        description=row["description"],
        owner=row["owner"],
        tags=json.loads(row["tags"]),
        created_by=row["created_by"],
        policy=message_pb2.PromotionPolicy.FromString(row["policy"]),
        latest_version=row["latest_version"],
    )
    model.create_time.FromDatetime(row["created_at"])
    return model


def _alias(row: asyncpg.Record) -> message_pb2.Alias:
    alias = message_pb2.Alias(
        name=row["alias"],
        version=row["version"],
        traffic_share=row["traffic_share"],
        updated_by=row["updated_by"],
    )
    alias.update_time.FromDatetime(row["updated_at"])
    return alias
