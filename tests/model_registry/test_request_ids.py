"""Client request ids: a change retried after an ambiguous failure applies once.

The ambiguity is real here: a proxy between client and registry loses the reply after the
registry committed (the client sees UNAVAILABLE), then the client retries. Every mutating
RPC is covered, from one table.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf.message import Message

from lathe.model_registry.v1 import message_pb2, service_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from libs.eventstore import EventStore, RequestLog
from libs.grpckit import mutating_methods
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from libs.sdk.retries import RetryPolicy
from tests.model_registry.helpers import new_model, status_of, unique
from tests.support import registry_client as client
from tests.support.cli import run_lathe
from tests.support.reply_dropping_link import ReplyDroppingLink, reply_dropping_link

ACTOR = [("lathe-actor", "alice")]
Call = Callable[[ModelRegistryStub, str, str, int], Awaitable[Message]]


@dataclass(frozen=True)
class _Mutation:
    """One mutating RPC: how to set the scene, call it, and where its event lands."""

    rpc: str
    prepare: Callable[[ModelRegistryStub], Awaitable[str]]
    """Creates what the call needs; returns the model name."""
    call: Call
    """(stub, model name, request id, variant): variant 1 asks for something else."""
    stream: Callable[[str], str]
    """The stream the call appends to, by model name."""
    check: Callable[[Message], None]
    """What the reply must say, whichever attempt it answers."""


async def _model_with_versions(stub: ModelRegistryStub, versions: int = 2) -> str:
    name = await new_model(stub)
    for _ in range(versions):
        await client.register(stub, name)
    return name


async def _with_alias(stub: ModelRegistryStub) -> str:
    name = await _model_with_versions(stub)
    await stub.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=1))
    return name


async def _just_a_name(stub: ModelRegistryStub) -> str:
    return unique()


def _create(stub: ModelRegistryStub, name: str, rid: str, variant: int) -> Awaitable[Message]:
    owner = "uw-ml" if variant == 0 else "another-team"
    return stub.CreateModel(rr.CreateModelRequest(name=name, owner=owner, request_id=rid))


def _policy(stub: ModelRegistryStub, name: str, rid: str, variant: int) -> Awaitable[Message]:
    alias = "production" if variant == 0 else "staging"
    policy = message_pb2.PromotionPolicy(
        protected_aliases=[message_pb2.ProtectedAlias(alias=alias, require_approval=True)]
    )
    return stub.SetPromotionPolicy(
        rr.SetPromotionPolicyRequest(model_name=name, policy=policy, request_id=rid)
    )


def _register(stub: ModelRegistryStub, name: str, rid: str, variant: int) -> Awaitable[Message]:
    meta = client.metadata(name, metrics={"auc": 0.8 if variant == 0 else 0.9})
    meta.request_id = rid
    return stub.RegisterModelVersion(client.upload_stream(meta, {"model.onnx": [b"onnx-bytes"]}))


def _set_alias(stub: ModelRegistryStub, name: str, rid: str, variant: int) -> Awaitable[Message]:
    return stub.SetAlias(
        rr.SetAliasRequest(
            model_name=name,
            alias="production",
            version=2,
            expected_version=1,
            traffic_share=0.0 if variant == 0 else 0.5,
            request_id=rid,
        )
    )


def _delete_alias(stub: ModelRegistryStub, name: str, rid: str, variant: int) -> Awaitable[Message]:
    return stub.DeleteAlias(
        rr.DeleteAliasRequest(
            model_name=name, alias="production", expected_version=1 + variant, request_id=rid
        )
    )


def _approve(stub: ModelRegistryStub, name: str, rid: str, variant: int) -> Awaitable[Message]:
    return stub.ApproveModelVersion(
        rr.ApproveModelVersionRequest(
            model_name=name,
            version=1,
            alias="production",
            comment="looks good" if variant == 0 else "something else",
            request_id=rid,
        ),
        metadata=ACTOR,
    )


def _model_stream(name: str) -> str:
    return f"model-{name}"


def _alias_stream(name: str) -> str:
    return f"alias-{name}/production"


def _is_model(reply: Message) -> None:
    assert reply.model.owner == "uw-ml" and reply.model.name  # type: ignore[attr-defined]


def _has_policy(reply: Message) -> None:
    protected = reply.model.policy.protected_aliases  # type: ignore[attr-defined]
    assert [p.alias for p in protected] == ["production"]


def _is_version_3(reply: Message) -> None:
    assert reply.model_version.version == 3  # type: ignore[attr-defined]
    assert reply.model_version.metrics["auc"] == pytest.approx(0.8)  # type: ignore[attr-defined]


def _points_to_2(reply: Message) -> None:
    assert reply.alias.version == 2 and reply.alias.name == "production"  # type: ignore[attr-defined]


def _empty(reply: Message) -> None:
    assert reply.ByteSize() == 0


MUTATIONS = [
    _Mutation("CreateModel", _just_a_name, _create, _model_stream, _is_model),
    _Mutation("SetPromotionPolicy", new_model, _policy, _model_stream, _has_policy),
    _Mutation(
        "RegisterModelVersion", _model_with_versions, _register, _model_stream, _is_version_3
    ),
    _Mutation("SetAlias", _with_alias, _set_alias, _alias_stream, _points_to_2),
    _Mutation("DeleteAlias", _with_alias, _delete_alias, _alias_stream, _empty),
    _Mutation("ApproveModelVersion", _model_with_versions, _approve, _model_stream, _empty),
]
BY_RPC = pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.rpc for m in MUTATIONS])


@pytest_asyncio.fixture(loop_scope="session")
async def link(
    registry: ModelRegistryStub, test_settings: LatheSettings
) -> AsyncIterator[ReplyDroppingLink]:
    async with reply_dropping_link(test_settings.service_addr(ServiceName.MODEL_REGISTRY)) as link:
        yield link


@pytest_asyncio.fixture(loop_scope="session")
async def lossy(link: ReplyDroppingLink) -> AsyncIterator[ModelRegistryStub]:
    """A registry stub whose calls pass through ``link``."""
    async with grpc.aio.insecure_channel(link.address) as channel:
        yield ModelRegistryStub(channel)


async def _events(pool: asyncpg.Pool, stream_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT event_type, causation_id FROM model_registry.events WHERE stream_id = $1 "
        "ORDER BY stream_version",
        stream_id,
    )


def test_every_mutating_rpc_takes_a_request_id_and_is_in_the_table() -> None:
    service = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
    mutating = {path.rsplit("/", 1)[-1] for path in mutating_methods(service)}
    assert mutating == {m.rpc for m in MUTATIONS}
    for name in mutating:
        request = service.methods_by_name[name].input_type
        if name == "RegisterModelVersion":  # client-streaming: the id rides on the metadata
            request = request.fields_by_name["metadata"].message_type
        field = request.fields_by_name.get("request_id")
        assert field is not None and field.type == field.TYPE_STRING, name


@BY_RPC
async def test_a_retry_after_a_lost_reply_applies_once_and_gets_the_reply(
    mutation: _Mutation,
    registry: ModelRegistryStub,
    lossy: ModelRegistryStub,
    link: ReplyDroppingLink,
    db_pool: asyncpg.Pool,
) -> None:
    name = await mutation.prepare(registry)
    stream = mutation.stream(name)
    before = len(await _events(db_pool, stream))
    rid = str(uuid.uuid4())

    link.drop_next_replies(1)
    code, _ = await status_of(mutation.call(lossy, name, rid, 0))
    assert code == grpc.StatusCode.UNAVAILABLE and link.replies_dropped >= 1
    committed = await _events(db_pool, stream)
    assert len(committed) == before + 1, "the first attempt committed; its reply was lost"

    retried = await mutation.call(registry, name, rid, 0)
    again = await mutation.call(lossy, name, rid, 0)

    mutation.check(retried)
    assert again == retried
    after = await _events(db_pool, stream)
    assert after == committed, "the retries applied nothing new"
    assert after[-1]["causation_id"] == rid, "the event names the request that caused it"


@BY_RPC
async def test_the_same_id_for_another_request_is_refused(
    mutation: _Mutation, registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    name = await mutation.prepare(registry)
    stream = mutation.stream(name)
    rid = str(uuid.uuid4())
    await mutation.call(registry, name, rid, 0)
    applied = await _events(db_pool, stream)

    code, details = await status_of(mutation.call(registry, name, rid, 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"request_id {rid!r} was already used for a different {mutation.rpc}" in details
    other = next(m for m in MUTATIONS if m.rpc != mutation.rpc)
    code, details = await status_of(other.call(registry, await other.prepare(registry), rid, 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"already used for a {mutation.rpc} request" in details
    assert await _events(db_pool, stream) == applied


@BY_RPC
async def test_concurrent_duplicates_apply_once(
    mutation: _Mutation, registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    name = await mutation.prepare(registry)
    stream = mutation.stream(name)
    before = len(await _events(db_pool, stream))
    rid = str(uuid.uuid4())

    replies = await asyncio.gather(*(mutation.call(registry, name, rid, 0) for _ in range(8)))

    assert all(reply == replies[0] for reply in replies)
    mutation.check(replies[0])
    assert len(await _events(db_pool, stream)) == before + 1


@pytest.mark.parametrize(
    "rid", ["has space", "x" * 129, "-leading-dash", "naïve", "a/b", "semi;colon"]
)
async def test_malformed_request_ids_are_invalid_argument(
    registry: ModelRegistryStub, rid: str
) -> None:
    code, details = await status_of(_create(registry, unique(), rid, 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid request id" in details


async def test_a_retried_registration_is_answered_before_its_upload(
    registry: ModelRegistryStub,
) -> None:
    name = await new_model(registry)
    rid = str(uuid.uuid4())
    first = await _register(registry, name, rid, 0)
    meta = client.metadata(name)
    meta.request_id = rid
    retried = await registry.RegisterModelVersion(client.upload_stream(meta, {}))
    assert retried == first, "a recorded registration needs no chunks to answer its retry"


async def test_ids_past_the_window_are_pruned(
    registry: ModelRegistryStub, db_pool: asyncpg.Pool
) -> None:
    name = unique()
    rid = str(uuid.uuid4())
    await _create(registry, name, rid, 0)
    log = RequestLog(EventStore(db_pool, "model_registry"), window=timedelta(hours=24))
    await db_pool.execute(
        "UPDATE model_registry.client_requests SET recorded_at = now() - interval '25 hours' "
        "WHERE request_id = $1",
        rid,
    )
    assert await log.prune() >= 1
    assert (
        await db_pool.fetchval(
            "SELECT count(*) FROM model_registry.client_requests WHERE request_id = $1", rid
        )
        == 0
    )
    code, _ = await status_of(_create(registry, name, rid, 0))
    assert code == grpc.StatusCode.ALREADY_EXISTS, "past the window a retry runs again"


_SDK_CALLS: dict[str, Callable[[RegistryClient, str], Awaitable[object]]] = {
    "CreateModel": lambda sdk, name: sdk.create_model(
        rr.CreateModelRequest(name=name, owner="uw-ml")
    ),
    "SetPromotionPolicy": lambda sdk, name: sdk.set_promotion_policy(
        rr.SetPromotionPolicyRequest(
            model_name=name,
            policy=message_pb2.PromotionPolicy(
                protected_aliases=[message_pb2.ProtectedAlias(alias="production")]
            ),
        )
    ),
    "RegisterModelVersion": lambda sdk, name: sdk.register_version(
        VersionSpec(name, client.SIGNATURE, metrics={"auc": 0.8}),
        {"model.onnx": ArtifactUpload(message_pb2.ARTIFACT_FORMAT_ONNX, content=b"onnx")},
    ),
    "SetAlias": lambda sdk, name: sdk.set_alias(
        rr.SetAliasRequest(model_name=name, alias="production", version=2, expected_version=1)
    ),
    "DeleteAlias": lambda sdk, name: sdk.delete_alias(
        rr.DeleteAliasRequest(model_name=name, alias="production", expected_version=1)
    ),
    "ApproveModelVersion": lambda sdk, name: sdk.approve(
        rr.ApproveModelVersionRequest(model_name=name, version=1, alias="production")
    ),
}


@BY_RPC
async def test_the_sdk_sends_an_id_and_retries_a_lost_reply_safely(
    mutation: _Mutation,
    registry: ModelRegistryStub,
    lossy: ModelRegistryStub,
    link: ReplyDroppingLink,
    db_pool: asyncpg.Pool,
) -> None:
    name = await mutation.prepare(registry)
    stream = mutation.stream(name)
    before = len(await _events(db_pool, stream))
    sdk = RegistryClient(lossy, actor="alice", retry=RetryPolicy(first_backoff_s=0.05))

    link.drop_next_replies(1)
    dropped = link.replies_dropped
    await _SDK_CALLS[mutation.rpc](sdk, name)

    assert link.replies_dropped == dropped + 1, "the first reply was lost, and retried"
    events = await _events(db_pool, stream)
    assert len(events) == before + 1
    assert events[-1]["causation_id"], "sent with a request id"


async def test_the_cli_promotes_and_approves_once_when_a_reply_is_lost(
    registry: ModelRegistryStub,
    link: ReplyDroppingLink,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
) -> None:
    name = await _with_alias(registry)
    through_link = test_settings.model_copy(update={"model_registry_addr": link.address})

    link.drop_next_replies(1)
    code, output = await run_lathe(
        through_link, "models", "approve", name, "2", "production", "--actor", "bob"
    )
    assert code == 0, output
    link.drop_next_replies(1)
    code, output = await run_lathe(
        through_link, "models", "promote", name, "production", "2", "--expected", "1"
    )
    assert code == 0 and "production -> version 2" in output, output

    assert link.replies_dropped >= 2
    approvals = [e for e in await _events(db_pool, f"model-{name}") if "Approved" in e[0]]
    assert len(approvals) == 1 and approvals[0]["causation_id"]
    moves = await _events(db_pool, f"alias-{name}/production")
    assert len(moves) == 2 and moves[-1]["causation_id"], "set to 1, then moved to 2 once"
