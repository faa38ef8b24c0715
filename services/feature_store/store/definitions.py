"""The definitions read model: every applied version, and the latest of each.

Deleted definitions (DefinitionDeleted, ADR 0022) keep their rows as history; every read
here leaves out a deleted name, and versions up to its latest deleted one after it is
re-created. Deprecations are read beside the definitions (``statuses``).
"""

from __future__ import annotations

import asyncpg
from google.protobuf.message import Message

from lathe.feature_store.v1 import events_pb2
from lathe.feature_store.v1 import message_pb2 as m
from libs.eventstore import RecordedEvent
from services.feature_store.domain.definitions.changes import Applied
from services.feature_store.store.offline import ensure_log_table

_KINDS: dict[str, type[Message]] = {
    "entity": m.Entity,
    "feature_view": m.FeatureView,
    "on_demand_view": m.OnDemandFeatureView,
    "feature_service": m.FeatureService,
}


def unwrap(message: Message) -> tuple[str, Message] | None:
    """(kind, definition) carried by a *Defined event, None for other events."""
    match message:
        case events_pb2.EntityDefined():
            return "entity", message.entity
        case events_pb2.FeatureViewDefined():
            return "feature_view", message.feature_view
        case events_pb2.OnDemandFeatureViewDefined():
            return "on_demand_view", message.on_demand_view
        case events_pb2.FeatureServiceDefined():
            return "feature_service", message.feature_service
    return None


def wrap(kind: str, definition: Message) -> Message:
    """The *Defined event that records ``definition``."""
    return {
        "entity": lambda d: events_pb2.EntityDefined(entity=d),
        "feature_view": lambda d: events_pb2.FeatureViewDefined(feature_view=d),
        "on_demand_view": lambda d: events_pb2.OnDemandFeatureViewDefined(on_demand_view=d),
        "feature_service": lambda d: events_pb2.FeatureServiceDefined(feature_service=d),
    }[kind](definition)


_DELETED = """
    INSERT INTO feature_store.definition_status AS s (kind, name, deleted, deleted_through)
    VALUES ($1, $2, true, $3)
    ON CONFLICT (kind, name) DO UPDATE SET
        deleted = true, deprecation = NULL,
        deleted_through = greatest(coalesce(s.deleted_through, 0), EXCLUDED.deleted_through)"""

_DEPRECATED = """
    INSERT INTO feature_store.definition_status AS s (kind, name, deprecation)
    VALUES ($1, $2, $3)
    ON CONFLICT (kind, name) DO UPDATE SET deprecation = EXCLUDED.deprecation"""

_RECREATED = """
    UPDATE feature_store.definition_status SET deleted = false
    WHERE kind = $1 AND name = $2 AND deleted AND deleted_through < $3"""

# Rows of live definitions: not deleted, and not a version a deletion covered.
_LIVE = """
    FROM feature_store.definitions d
    LEFT JOIN feature_store.definition_status s USING (kind, name)
    WHERE NOT coalesce(s.deleted, false)
      AND (s.deleted_through IS NULL OR d.version > s.deleted_through)"""


class DefinitionsProjection:
    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("DELETE FROM feature_store.definitions")
        await conn.execute("DELETE FROM feature_store.definition_status")

    async def apply(self, conn: asyncpg.Connection, event: RecordedEvent, message: Message) -> None:
        if isinstance(message, events_pb2.DefinitionDeleted):
            await conn.execute(_DELETED, message.kind, message.name, message.last_version)
            return
        if isinstance(message, events_pb2.DefinitionDeprecated):
            reason = None if message.lifted else message.reason
            await conn.execute(_DEPRECATED, message.kind, message.name, reason)
            return
        unwrapped = unwrap(message)
        if unwrapped is None:
            return
        kind, definition = unwrapped
        await conn.execute(
            _RECREATED,
            kind,
            definition.name,  # type: ignore[attr-defined]
            getattr(definition, "version", 0),
        )
        if isinstance(definition, m.FeatureView):
            await ensure_log_table(conn, definition)
        await conn.execute(
            """INSERT INTO feature_store.definitions
                   (kind, name, version, body, defined_at, defined_by)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (kind, name, version) DO UPDATE SET
                   body = EXCLUDED.body, defined_at = EXCLUDED.defined_at,
                   defined_by = EXCLUDED.defined_by""",
            kind,
            definition.name,  # type: ignore[attr-defined]
            getattr(definition, "version", 0),
            definition.SerializeToString(deterministic=True),
            event.recorded_at,
            event.metadata.actor,
        )


_GENERATION = """
    SELECT coalesce(max(global_position), 0) FROM feature_store.events
    WHERE event_type LIKE 'lathe.feature_store.v1.%Defined'
       OR event_type IN ('lathe.feature_store.v1.DefinitionDeleted',
                         'lathe.feature_store.v1.DefinitionDeprecated')"""


class DefinitionQueries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def generation(self) -> int:
        """A number that changes whenever a definition is applied (the newest definition
        event's position): cheap to poll."""
        return int(await self._pool.fetchval(_GENERATION))

    async def applied(self, conn: asyncpg.Connection | None = None) -> Applied:
        executor = conn or self._pool
        rows = await executor.fetch(
            f"""SELECT DISTINCT ON (kind, name) kind, body {_LIVE}
                ORDER BY kind, name, version DESC"""
        )
        applied = Applied()
        for row in await executor.fetch(
            """SELECT kind, name, deleted_through FROM feature_store.definition_status
               WHERE deleted"""
        ):
            applied.deleted[(row["kind"], row["name"])] = row["deleted_through"]
        targets = {
            "entity": applied.entities,
            "feature_view": applied.views,
            "on_demand_view": applied.on_demand,
            "feature_service": applied.services,
        }
        for row in rows:
            definition = _KINDS[row["kind"]].FromString(row["body"])
            targets[row["kind"]][definition.name] = definition  # type: ignore[attr-defined,index]
        return applied

    async def everything(self) -> dict[str, list[Message]]:
        """Every live version of every definition, by kind, oldest version first."""
        rows = await self._pool.fetch(f"SELECT kind, body {_LIVE} ORDER BY kind, name, version")
        found: dict[str, list[Message]] = {kind: [] for kind in _KINDS}
        for row in rows:
            found[row["kind"]].append(_KINDS[row["kind"]].FromString(row["body"]))
        return found

    async def deprecations(self) -> dict[tuple[str, str], str]:
        """(kind, name) -> why it is deprecated, for live deprecated definitions."""
        rows = await self._pool.fetch(
            """SELECT kind, name, deprecation FROM feature_store.definition_status
               WHERE deprecation IS NOT NULL AND NOT deleted"""
        )
        return {(row["kind"], row["name"]): row["deprecation"] for row in rows}

    async def deprecation(self, kind: str, name: str) -> str:
        """Why one definition is deprecated ("" when it is not)."""
        reason = await self._pool.fetchval(
            """SELECT deprecation FROM feature_store.definition_status
               WHERE kind = $1 AND name = $2 AND NOT deleted""",
            kind,
            name,
        )
        return reason or ""

    async def version(self, kind: str, name: str, version: int) -> Message | None:
        """One live version (0: the latest)."""
        body = await self._pool.fetchval(
            f"""SELECT body {_LIVE} AND kind = $1 AND name = $2 AND ($3 = 0 OR version = $3)
                ORDER BY version DESC LIMIT 1""",
            kind,
            name,
            version,
        )
        return _KINDS[kind].FromString(body) if body is not None else None

    async def versions(self, kind: str, name: str) -> list[int]:
        rows = await self._pool.fetch(
            f"SELECT version {_LIVE} AND kind = $1 AND name = $2 ORDER BY version",
            kind,
            name,
        )
        return [row["version"] for row in rows]

    async def latest_views_page(
        self, *, after_name: str, limit: int
    ) -> tuple[list[m.FeatureView], bool]:
        rows = await self._pool.fetch(
            f"""SELECT DISTINCT ON (name) name, body {_LIVE}
                AND kind = 'feature_view' AND name > $1
                ORDER BY name, version DESC LIMIT $2""",
            after_name,
            limit + 1,
        )
        views = [m.FeatureView.FromString(row["body"]) for row in rows[:limit]]
        return views, len(rows) > limit
