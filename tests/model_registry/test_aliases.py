"""Aliases: optimistic moves under contention, as-of resolution, gates and approvals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.eventstore import EventStore, rebuild_projection
from services.model_registry.events import CATALOG
from services.model_registry.store.projection import RegistryProjection
from tests.model_registry.helpers import new_model, status_of
from tests.support import registry_client as client

_ALIASES = "SELECT row_to_json(a)::text FROM model_registry.aliases a ORDER BY model_name, alias"


async def test_100_racing_moves_on_one_expected_version_one_wins(
    registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    name = await new_model(registry)
    for _ in range(3):
        await client.register(registry, name)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=1))

    async def move(i: int) -> grpc.StatusCode:
        try:
            await registry.SetAlias(
                rr.SetAliasRequest(
                    model_name=name, alias="production", version=2 + i % 2, expected_version=1
                ),
                metadata=[("lathe-actor", f"racer-{i}")],
            )
        except grpc.aio.AioRpcError as rejected:
            return rejected.code()
        return grpc.StatusCode.OK

    codes = await asyncio.gather(*(move(i) for i in range(100)))

    assert codes.count(grpc.StatusCode.OK) == 1
    assert codes.count(grpc.StatusCode.ABORTED) == 99
    resolved = (
        await registry.ResolveAlias(rr.ResolveAliasRequest(model_name=name, alias="production"))
    ).alias
    moves = await db_pool.fetchval(
        "SELECT count(*) FROM model_registry.events WHERE stream_id = $1",
        f"alias-{name}/production",
    )
    assert moves == 2
    live = await db_pool.fetch(_ALIASES)
    await rebuild_projection(EventStore(db_pool, "model_registry"), CATALOG, RegistryProjection())
    assert await db_pool.fetch(_ALIASES) == live, "the alias state must equal a replay of the log"
    assert resolved.version in (2, 3)


async def test_as_of_resolution_across_moves(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    for _ in range(3):
        await client.register(registry, name)
    times: list[datetime] = [datetime.now(UTC)]

    async def step(call: object) -> None:
        await call  # type: ignore[misc]
        await asyncio.sleep(0.02)
        times.append(datetime.now(UTC))

    await step(
        registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=1))
    )
    await step(
        registry.SetAlias(
            rr.SetAliasRequest(model_name=name, alias="production", version=2, expected_version=1)
        )
    )
    await step(
        registry.DeleteAlias(
            rr.DeleteAliasRequest(model_name=name, alias="production", expected_version=2)
        )
    )
    await step(
        registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=3))
    )

    async def as_of(moment: datetime) -> int | grpc.StatusCode:
        stamp = Timestamp()
        stamp.FromDatetime(moment)
        request = rr.ResolveAliasRequest(model_name=name, alias="production", as_of=stamp)
        try:
            return (await registry.ResolveAlias(request)).alias.version
        except grpc.aio.AioRpcError as missing:
            return missing.code()

    results = [await as_of(moment) for moment in times]

    assert results == [grpc.StatusCode.NOT_FOUND, 1, 2, grpc.StatusCode.NOT_FOUND, 3]


async def test_protected_alias_needs_its_gates_and_another_approver(
    registry: ModelRegistryStub,
) -> None:
    policy = message_pb2.PromotionPolicy(
        protected_aliases=[
            message_pb2.ProtectedAlias(
                alias="production",
                gates=[
                    message_pb2.MetricGate(
                        metric="auc",
                        comparison=message_pb2.COMPARISON_GREATER_OR_EQUAL,
                        threshold=0.70,
                    )
                ],
                require_approval=True,
            )
        ]
    )
    name = await new_model(registry, policy=policy)
    await client.register(registry, name, metrics={"auc": 0.65})
    await client.register(registry, name, metrics={"auc": 0.82})
    await client.register(registry, name, metrics={"ks": 0.5})
    alice = [("lathe-actor", "alice")]

    def promote(version: int) -> object:
        return registry.SetAlias(
            rr.SetAliasRequest(model_name=name, alias="production", version=version), metadata=alice
        )

    code, details = await status_of(promote(1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "auc >= 0.7" in details and "auc=0.65" in details

    code, details = await status_of(promote(3))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no metric 'auc'" in details

    code, details = await status_of(promote(2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "approval" in details

    approve = rr.ApproveModelVersionRequest(model_name=name, version=2, alias="production")
    await registry.ApproveModelVersion(approve, metadata=alice)
    code, details = await status_of(promote(2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, "self-approval must not count"

    await registry.ApproveModelVersion(approve, metadata=[("lathe-actor", "bob")])
    promoted = await promote(2)
    assert promoted.alias.version == 2  # type: ignore[attr-defined]
    assert promoted.alias.updated_by == "alice"  # type: ignore[attr-defined]

    staging = await registry.SetAlias(
        rr.SetAliasRequest(model_name=name, alias="staging", version=1)
    )
    assert staging.alias.version == 1, "unprotected aliases move freely"


async def test_canary_traffic_share_and_history(registry: ModelRegistryStub) -> None:
    name = await new_model(registry)
    await client.register(registry, name)
    await client.register(registry, name)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=1))
    await registry.SetAlias(
        rr.SetAliasRequest(model_name=name, alias="canary", version=2, traffic_share=0.05)
    )

    model = (await registry.GetModel(rr.GetModelRequest(name=name))).model
    history = await registry.GetModelHistory(rr.GetModelHistoryRequest(model_name=name))

    assert {k: (v.version, v.traffic_share) for k, v in model.aliases.items()} == {
        "production": (1, 0.0),
        "canary": (2, 0.05),
    }
    summaries = [entry.summary for entry in history.entries]
    assert summaries[0].startswith("model created")
    assert "version 2 registered (1 artifacts, auc=0.8)" in summaries
    assert "alias canary: - -> 2 at 5% traffic" in summaries
    positions = [entry.position for entry in history.entries]
    assert positions == sorted(positions)


async def test_each_move_under_racing_moves_replies_with_its_own_move(
    registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    name = await new_model(registry)
    for _ in range(4):
        await client.register(registry, name)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=1))

    async def mover(i: int, wins: int = 4) -> list[tuple[int, float, message_pb2.Alias]]:
        """Move the alias ``wins`` times, each from wherever it is then; its replies."""
        version, share = 1 + i % 4, (i + 1) / 100
        replies = []
        while len(replies) < wins:
            current = (
                await registry.ResolveAlias(
                    rr.ResolveAliasRequest(model_name=name, alias="production")
                )
            ).alias.version
            try:
                reply = await registry.SetAlias(
                    rr.SetAliasRequest(
                        model_name=name,
                        alias="production",
                        version=version,
                        expected_version=current,
                        traffic_share=share,
                    ),
                    metadata=[("lathe-actor", f"mover-{i}")],
                )
            except grpc.aio.AioRpcError as lost:
                assert lost.code() == grpc.StatusCode.ABORTED
                continue
            replies.append((version, share, reply.alias))
        return replies

    movers = await asyncio.gather(*(mover(i) for i in range(10)))

    events = await db_pool.fetch(
        "SELECT actor, recorded_at FROM model_registry.events WHERE stream_id = $1",
        f"alias-{name}/production",
    )
    recorded = {(row["actor"], row["recorded_at"]) for row in events}
    for i, replies in enumerate(movers):
        for version, share, alias in replies:
            assert (alias.version, alias.traffic_share, alias.updated_by) == (
                version,
                share,
                f"mover-{i}",
            ), "a move's reply shows that move, not a later one"
            assert (alias.updated_by, alias.update_time.ToDatetime(tzinfo=UTC)) in recorded


async def test_as_of_in_the_future_is_refused_not_answered_with_today(
    registry: ModelRegistryStub,
) -> None:
    name = await new_model(registry)
    await client.register(registry, name)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=1))
    tomorrow, now = Timestamp(), Timestamp()
    tomorrow.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    now.FromDatetime(datetime.now(UTC))

    code, details = await status_of(
        registry.ResolveAlias(
            rr.ResolveAliasRequest(model_name=name, alias="production", as_of=tomorrow)
        )
    )
    past = await registry.ResolveAlias(
        rr.ResolveAliasRequest(model_name=name, alias="production", as_of=now)
    )

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "as_of is in the future" in details and "Leave as_of unset" in details
    assert past.alias.version == 1
