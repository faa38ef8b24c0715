"""The registry's read models, folded from its events.

Applied in the same transaction as each append (so reads see their writes) and
by ``rebuild_projection`` when replaying the log from scratch.
"""

from __future__ import annotations

import json

import asyncpg
from google.protobuf.message import Message

from lathe.model_registry.v1 import events_pb2, message_pb2
from libs.eventstore import RecordedEvent


def version_of(
    event: RecordedEvent, message: events_pb2.ModelVersionRegistered
) -> message_pb2.ModelVersion:
    """The version as its recorded registration makes it (the row the projection writes)."""
    version = message_pb2.ModelVersion(
        model_name=message.model_name,
        version=message.version,
        description=message.description,
        signature=message.signature,
        metrics=message.metrics,
        tags=message.tags,
        lineage=message.lineage,
        artifacts=message.artifacts,
        created_by=event.metadata.actor,
    )
    version.create_time.FromDatetime(event.recorded_at)
    return version


class RegistryProjection:
    """Maintains models, model_versions, aliases and approvals."""

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "TRUNCATE model_registry.approvals, model_registry.aliases, "
            "model_registry.model_versions, model_registry.models"
        )

    async def apply(self, conn: asyncpg.Connection, event: RecordedEvent, message: Message) -> None:
        match message:
            case events_pb2.ModelCreated():
                await conn.execute(
                    """INSERT INTO model_registry.models (name, description, owner, tags,
                           created_at, created_by, stream_version, policy)
                       VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8)""",
                    message.name,
                    message.description,
                    message.owner,
                    json.dumps(dict(message.tags), sort_keys=True),
                    event.recorded_at,
                    event.metadata.actor,
                    event.stream_version,
                    message.policy.SerializeToString(deterministic=True),
                )
            case events_pb2.PromotionPolicySet():
                await conn.execute(
                    "UPDATE model_registry.models SET policy = $2 WHERE name = $1",
                    message.model_name,
                    message.policy.SerializeToString(deterministic=True),
                )
            case events_pb2.ModelVersionRegistered():
                await self._register_version(conn, event, message)
            case events_pb2.ModelVersionApproved():
                await conn.execute(
                    """INSERT INTO model_registry.approvals
                           (model_name, version, alias, approver, comment, approved_at)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
                    message.model_name,
                    message.version,
                    message.alias,
                    event.metadata.actor,
                    message.comment,
                    event.recorded_at,
                )
            case events_pb2.AliasSet() | events_pb2.AliasDeleted():
                version = message.version if isinstance(message, events_pb2.AliasSet) else 0
                share = message.traffic_share if isinstance(message, events_pb2.AliasSet) else 0.0
                await conn.execute(
                    """INSERT INTO model_registry.aliases (model_name, alias, version,
                           traffic_share, updated_at, updated_by, stream_version)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)
                       ON CONFLICT (model_name, alias) DO UPDATE SET
                           version = EXCLUDED.version, traffic_share = EXCLUDED.traffic_share,
                           updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by,
                           stream_version = EXCLUDED.stream_version""",
                    message.model_name,
                    message.alias,
                    version,
                    share,
                    event.recorded_at,
                    event.metadata.actor,
                    event.stream_version,
                )
            case _:
                pass  # e.g. ArtifactCorruptionDetected: recorded in the log only

    async def _register_version(
        self,
        conn: asyncpg.Connection,
        event: RecordedEvent,
        message: events_pb2.ModelVersionRegistered,
    ) -> None:
        version = version_of(event, message)
        await conn.execute(
            """INSERT INTO model_registry.model_versions (model_name, version, body, created_at)
               VALUES ($1, $2, $3, $4)""",
            message.model_name,
            message.version,
            version.SerializeToString(deterministic=True),
            event.recorded_at,
        )
        await conn.execute(
            """UPDATE model_registry.models SET latest_version = greatest(latest_version, $2)
               WHERE name = $1""",
            message.model_name,
            message.version,
        )
