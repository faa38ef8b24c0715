"""The deployments read model: the folded state of every deployment stream, one row each.

Written only together with the events it folds (same transaction), read by every
process's loader to learn what it should serve.
"""

from __future__ import annotations

import asyncpg

from services.inference.domain.deployment import Deployment, Failure

_COLUMNS = (
    "model_name, alias, stream_version, request_revision, requested_version, traffic_share, "
    "alias_time, removed, serving_version, previous_version, runtime, failure_version, "
    "failure_stage, failure_reason, failure_at"
)
_UPSERT = f"""
    INSERT INTO inference.deployments ({_COLUMNS})
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
    ON CONFLICT (model_name, alias) DO UPDATE SET
        stream_version = EXCLUDED.stream_version, request_revision = EXCLUDED.request_revision,
        requested_version = EXCLUDED.requested_version, traffic_share = EXCLUDED.traffic_share,
        alias_time = EXCLUDED.alias_time, removed = EXCLUDED.removed,
        serving_version = EXCLUDED.serving_version, previous_version = EXCLUDED.previous_version,
        runtime = EXCLUDED.runtime, failure_version = EXCLUDED.failure_version,
        failure_stage = EXCLUDED.failure_stage, failure_reason = EXCLUDED.failure_reason,
        failure_at = EXCLUDED.failure_at, updated_at = now()"""
_SELECT_ALL = f"SELECT {_COLUMNS} FROM inference.deployments ORDER BY model_name, alias"
_SELECT_ONE = f"SELECT {_COLUMNS} FROM inference.deployments WHERE model_name = $1 AND alias = $2"
_LOCK = "SELECT 1 FROM inference.deployments WHERE model_name = $1 AND alias = $2 FOR UPDATE"


async def save(conn: asyncpg.Connection, state: Deployment) -> None:
    failure = state.failure
    await conn.execute(
        _UPSERT,
        state.model_name,
        state.alias,
        state.stream_version,
        state.request_revision,
        state.requested_version,
        state.traffic_share,
        state.alias_time,
        state.removed,
        state.serving_version,
        state.previous_version,
        state.runtime,
        failure.version if failure else None,
        failure.stage if failure else None,
        failure.reason if failure else None,
        failure.at if failure else None,
    )


async def all_deployments(pool: asyncpg.Pool) -> list[Deployment]:
    return [_state(row) for row in await pool.fetch(_SELECT_ALL)]


async def one(conn: asyncpg.Connection | asyncpg.Pool, model: str, alias: str) -> Deployment:
    row = await conn.fetchrow(_SELECT_ONE, model, alias)
    return _state(row) if row is not None else Deployment(model, alias)


async def one_locked(conn: asyncpg.Connection, model: str, alias: str) -> Deployment:
    """``one``, after locking its row until the caller's transaction ends (a deployment
    with no row yet locks nothing: the stream's expected version guards its first write)."""
    await conn.execute(_LOCK, model, alias)
    return await one(conn, model, alias)


def _state(row: asyncpg.Record) -> Deployment:
    failure = None
    if row["failure_version"] is not None:
        failure = Failure(
            row["failure_version"], row["failure_stage"], row["failure_reason"], row["failure_at"]
        )
    return Deployment(
        model_name=row["model_name"],
        alias=row["alias"],
        stream_version=row["stream_version"],
        request_revision=row["request_revision"],
        requested_version=row["requested_version"],
        traffic_share=row["traffic_share"],
        alias_time=row["alias_time"],
        removed=row["removed"],
        serving_version=row["serving_version"],
        previous_version=row["previous_version"],
        runtime=row["runtime"],
        failure=failure,
    )
