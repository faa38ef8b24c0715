"""The registry's read models can be rebuilt from the event log alone."""

from __future__ import annotations

import uuid

import asyncpg

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.eventstore import EventStore, rebuild_projection
from services.model_registry.events import CATALOG
from services.model_registry.store.projection import RegistryProjection

_SNAPSHOT = "SELECT row_to_json(m)::text FROM model_registry.models m ORDER BY name"


async def test_rebuilt_models_projection_equals_the_live_one(
    registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    for i in range(12):
        await registry.CreateModel(
            rr.CreateModelRequest(
                name=f"rebuild-{uuid.uuid4().hex[:8]}",
                owner=f"team-{i % 3}",
                description=f"model {i}",
                tags={"k": str(i)} if i % 2 else {},
            ),
            metadata=[("lathe-actor", f"user-{i}")],
        )
    live = await db_pool.fetch(_SNAPSHOT)
    async with db_pool.acquire() as conn:
        await conn.execute("DELETE FROM model_registry.models")  # lose the read model entirely

    applied = await rebuild_projection(
        EventStore(db_pool, "model_registry"), CATALOG, RegistryProjection()
    )

    rebuilt = await db_pool.fetch(_SNAPSHOT)
    assert applied >= 12
    assert len(live) >= 12
    assert rebuilt == live
