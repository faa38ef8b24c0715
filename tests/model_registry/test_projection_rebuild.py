"""The registry's read models can be rebuilt from the event log alone."""

from __future__ import annotations

import uuid

import asyncpg

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.eventstore import EventStore, rebuild_projection
from services.model_registry.events import CATALOG
from services.model_registry.store.projection import RegistryProjection
from tests.support import registry_client as client

_TABLES = {
    "models": "name",
    "model_versions": "model_name, version",
    "aliases": "model_name, alias",
    "approvals": "model_name, version, alias, approver",
}


async def _snapshot(pool: asyncpg.Pool) -> dict[str, list[str]]:
    snapshot = {}
    for table, order in _TABLES.items():
        rows = await pool.fetch(
            f"SELECT row_to_json(t)::text FROM model_registry.{table} t ORDER BY {order}"
        )
        snapshot[table] = [row[0] for row in rows]
    return snapshot


async def test_rebuilt_read_models_equal_the_live_ones(
    registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    for i in range(12):
        name = f"rebuild-{uuid.uuid4().hex[:8]}"
        await registry.CreateModel(
            rr.CreateModelRequest(
                name=name,
                owner=f"team-{i % 3}",
                description=f"model {i}",
                tags={"k": str(i)} if i % 2 else {},
            ),
            metadata=[("lathe-actor", f"user-{i}")],
        )
        await client.register(registry, name)
        await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="staging", version=1))
        await registry.ApproveModelVersion(
            rr.ApproveModelVersionRequest(model_name=name, version=1, alias="production"),
            metadata=[("lathe-actor", "reviewer")],
        )
    live = await _snapshot(db_pool)
    async with db_pool.acquire() as conn:
        await RegistryProjection().reset(conn)  # lose every read model

    applied = await rebuild_projection(
        EventStore(db_pool, "model_registry"), CATALOG, RegistryProjection()
    )

    assert applied >= 12 * 4
    assert all(len(rows) >= 12 for rows in live.values())
    assert await _snapshot(db_pool) == live
