"""Client request ids on the feature store's mutations: a retried change applies once.

The ambiguity is real: a proxy between client and feature store loses the reply after
the server did the work (the client sees UNAVAILABLE), then the client retries with the
same id. Every mutating RPC is covered from one table (docs/adr/0015).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pyarrow as pa
import pytest
import pytest_asyncio
from google.protobuf.message import Message

from lathe.feature_store.v1 import events_pb2, service_pb2
from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings, ServiceName
from libs.grpckit import mutating_methods
from libs.sdk.feature_store import FeatureStoreClient
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureView,
    Field,
    Float64,
    PushSource,
    StreamSource,
    repository_of,
)
from libs.sdk.retries import RetryPolicy
from services.feature_store.app.streaming.backfill import import_events
from services.feature_store.domain.streaming.events import RawEvent
from tests.feature_store.helpers import column, suffix
from tests.support.reply_dropping_link import ReplyDroppingLink, reply_dropping_link

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class _Scene:
    s: str
    """The suffix of every name the scene made."""


@dataclass(frozen=True)
class _Mutation:
    """One mutating RPC: how to set the scene, call it, and what it changes."""

    rpc: str
    prepare: Callable[[FeatureStoreStub, asyncpg.Pool], Awaitable[_Scene]]
    call: Callable[[FeatureStoreStub, _Scene, str, int], Awaitable[Message]]
    """(stub, scene, request id, variant): variant 1 asks for something else."""
    effects: Callable[[asyncpg.Pool, _Scene], Awaitable[tuple[object, ...]]]
    """What the change left behind (rows, events), compared before and after retries."""
    stream: Callable[[_Scene], str]
    """The event stream whose events carry the request id as their cause."""
    check: Callable[[Message], None]
    """What the reply must say, whichever attempt it answers."""


def _repository(s: str, variant: int = 0) -> object:
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"apply_{s}",
        entity=loan,
        source=PushSource(),
        features=[Field("v", Float64)],
        description="first" if variant == 0 else "second",
    )
    return repository_of([loan, view])


async def _nothing(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> _Scene:
    return _Scene(suffix())


async def _apply(features: FeatureStoreStub, scene: _Scene, rid: str, variant: int) -> Message:
    return await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=_repository(scene.s, variant), request_id=rid)
    )


async def _definition_events(db_pool: asyncpg.Pool, scene: _Scene) -> tuple[object, ...]:
    return tuple(await _events(db_pool, f"feature_view-apply_{scene.s}"))


def _applied(reply: Message) -> None:
    created = [
        c.name
        for c in reply.changes  # type: ignore[attr-defined]
        if c.kind == "feature_view" and c.action == m.CHANGE_ACTION_CREATE
    ]
    assert len(created) == 1 and created[0].startswith("apply_"), created


async def _push_view(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> _Scene:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"push_{s}", entity=loan, source=PushSource(), features=[Field("v", Float64)]
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
    )
    return _Scene(s)


async def _push(features: FeatureStoreStub, scene: _Scene, rid: str, variant: int) -> Message:
    return await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"push_{scene.s}",
            columns={
                "loan_id": column(["L1", "L2"]),
                "event_time": column([NOW - timedelta(hours=1)] * 2),
                "v": column([1.0, 2.0 + variant]),
            },
            request_id=rid,
        )
    )


async def _logged(db_pool: asyncpg.Pool, view: str) -> tuple[object, ...]:
    rows = await db_pool.fetch(
        f'SELECT entity_key, v FROM feature_store."log_{view}_v1" ORDER BY seq'
    )
    return tuple(tuple(r) for r in rows)


async def _push_rows(db_pool: asyncpg.Pool, scene: _Scene) -> tuple[object, ...]:
    return await _logged(db_pool, f"push_{scene.s}")


def _pushed(reply: Message) -> None:
    assert reply.rows_written == 2  # type: ignore[attr-defined]


async def _batch_view(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> _Scene:
    s = suffix()
    await db_pool.execute(
        f"CREATE TABLE public.mat_{s} (loan_id text, happened_at timestamptz, v double precision)"
    )
    await db_pool.executemany(
        f"INSERT INTO public.mat_{s} VALUES ($1, $2, $3)",
        [(f"L{i}", NOW - timedelta(hours=i + 1), float(i)) for i in range(3)],
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"mat_{s}",
        entity=loan,
        source=BatchSource(f"public.mat_{s}", event_time_column="happened_at"),
        features=[Field("v", Float64)],
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
    )
    return _Scene(s)


async def _materialize(
    features: FeatureStoreStub, scene: _Scene, rid: str, variant: int
) -> Message:
    request = rr.MaterializeRequest(feature_view=f"mat_{scene.s}", request_id=rid)
    if variant:
        request.end_time.FromDatetime(NOW + timedelta(days=1))
    progress = rr.MaterializeProgress()
    async for response in features.Materialize(request):
        progress = response.progress
    return progress


async def _materialized(db_pool: asyncpg.Pool, scene: _Scene) -> tuple[object, ...]:
    completed = [
        e["event_type"]
        for e in await _events(db_pool, f"materialization-mat_{scene.s}")
        if e["event_type"].endswith("Completed")
    ]
    return await _logged(db_pool, f"mat_{scene.s}"), len(completed) <= 1


def _done(reply: Message) -> None:
    assert reply.done  # type: ignore[attr-defined]


async def _stream_view(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> _Scene:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"bf_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="at"),
        aggregations=[Aggregation("amount", "sum", timedelta(days=1), "amount_1d")],
        allowed_lateness=timedelta(days=1),
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
    )
    body = {"loan_id": "L1", "at": (NOW - timedelta(minutes=5)).isoformat(), "amount": 2.5}
    await import_events(
        db_pool, f"src_{s}", [RawEvent(uuid.uuid4(), 1, NOW, json.dumps(body).encode())]
    )
    return _Scene(s)


async def _backfill(features: FeatureStoreStub, scene: _Scene, rid: str, variant: int) -> Message:
    return await features.BackfillStreamView(
        rr.BackfillStreamViewRequest(feature_view=f"bf_{scene.s}", version=variant, request_id=rid)
    )


async def _backfills(db_pool: asyncpg.Pool, scene: _Scene) -> tuple[object, ...]:
    return tuple(await _events(db_pool, f"backfill-bf_{scene.s}"))


def _backfilled(reply: Message) -> None:
    assert reply.events_used == 1 and reply.version == 1  # type: ignore[attr-defined]


async def _training(features: FeatureStoreStub, scene: _Scene, rid: str, variant: int) -> Message:
    """The call's snapshot message (its training set read to the end)."""
    labels = pa.table(
        {
            "loan_id": ["L1", "L2"][: 2 - variant],
            "event_time": pa.array([NOW] * (2 - variant), pa.timestamp("us", tz="UTC")),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, labels.schema) as writer:
        writer.write_table(labels)
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"push_{scene.s}:v"]),
        entity_rows_arrow=sink.getvalue().to_pybytes(),
        request_id=rid,
    )
    snapshot = rr.DatasetSnapshot()
    async for response in features.GetHistoricalFeatures(request):
        if response.HasField("snapshot"):
            snapshot = response.snapshot
    return snapshot


async def _pushed_view(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> _Scene:
    scene = await _push_view(features, db_pool)
    await _push(features, scene, "", 0)
    return scene


async def _snapshots(db_pool: asyncpg.Pool, scene: _Scene) -> tuple[object, ...]:
    """The scene's DatasetSnapshotCreated events: (stream, causation id)."""
    records = await db_pool.fetch(
        "SELECT stream_id, causation_id, payload FROM feature_store.events "
        "WHERE event_type = 'lathe.feature_store.v1.DatasetSnapshotCreated' "
        "ORDER BY global_position"
    )
    return tuple(
        (r["stream_id"], r["causation_id"])
        for r in records
        if f"push_{scene.s}:v"
        in events_pb2.DatasetSnapshotCreated.FromString(r["payload"]).feature_names
    )


def _snapshot(reply: Message) -> None:
    assert reply.rows == 2 and reply.snapshot_id.startswith("sha256:")  # type: ignore[attr-defined]


async def _delete(features: FeatureStoreStub, scene: _Scene, rid: str, variant: int) -> Message:
    return await features.DeleteDefinition(
        rr.DeleteDefinitionRequest(
            kind="feature_view",
            name=f"push_{scene.s}",
            reason="replaced" if variant == 0 else "obsolete",
            request_id=rid,
        )
    )


async def _deprecate(features: FeatureStoreStub, scene: _Scene, rid: str, variant: int) -> Message:
    return await features.DeprecateDefinition(
        rr.DeprecateDefinitionRequest(
            kind="feature_view",
            name=f"push_{scene.s}",
            reason="use push_v2" if variant == 0 else "use push_v3",
            request_id=rid,
        )
    )


def _status_events(event_type: str) -> Callable[[asyncpg.Pool, _Scene], Awaitable[tuple]]:
    """The scene view's events of ``event_type``, with their causes (the view's stream
    also holds its definition, applied without an id)."""

    async def effects(db_pool: asyncpg.Pool, scene: _Scene) -> tuple[object, ...]:
        return tuple(
            tuple(e)
            for e in await _events(db_pool, f"feature_view-push_{scene.s}")
            if e["event_type"] == f"lathe.feature_store.v1.{event_type}"
        )

    return effects


def _deleted(reply: Message) -> None:
    assert reply.last_version == 1  # type: ignore[attr-defined]


MUTATIONS = [
    _Mutation(
        "ApplyDefinitions",
        _nothing,
        _apply,
        _definition_events,
        lambda scene: f"feature_view-apply_{scene.s}",
        _applied,
    ),
    _Mutation("PushFeatures", _push_view, _push, _push_rows, lambda scene: "", _pushed),
    _Mutation(
        "Materialize",
        _batch_view,
        _materialize,
        _materialized,
        lambda scene: f"materialization-mat_{scene.s}",
        _done,
    ),
    _Mutation(
        "BackfillStreamView",
        _stream_view,
        _backfill,
        _backfills,
        lambda scene: f"backfill-bf_{scene.s}",
        _backfilled,
    ),
    _Mutation(
        "GetHistoricalFeatures", _pushed_view, _training, _snapshots, lambda scene: "", _snapshot
    ),
    _Mutation(
        "DeleteDefinition",
        _push_view,
        _delete,
        _status_events("DefinitionDeleted"),
        lambda scene: "",
        _deleted,
    ),
    _Mutation(
        "DeprecateDefinition",
        _push_view,
        _deprecate,
        _status_events("DefinitionDeprecated"),
        lambda scene: "",
        lambda reply: None,
    ),
]
BY_RPC = pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.rpc for m in MUTATIONS])


async def _events(db_pool: asyncpg.Pool, stream_id: str) -> list[asyncpg.Record]:
    return await db_pool.fetch(
        "SELECT event_type, causation_id FROM feature_store.events WHERE stream_id = $1 "
        "ORDER BY stream_version",
        stream_id,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def link(
    feature_store_host: object, test_settings: LatheSettings
) -> AsyncIterator[ReplyDroppingLink]:
    address = test_settings.service_addr(ServiceName.FEATURE_STORE)
    async with reply_dropping_link(address) as link:
        yield link


@pytest_asyncio.fixture(loop_scope="session")
async def lossy(link: ReplyDroppingLink) -> AsyncIterator[FeatureStoreStub]:
    """A feature-store stub whose calls pass through ``link``."""
    async with grpc.aio.insecure_channel(link.address) as channel:
        yield FeatureStoreStub(channel)


async def _status(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


async def _settled(db_pool: asyncpg.Pool, mutation: _Mutation, scene: _Scene) -> tuple[object, ...]:
    """The effects once the server is done with a call whose client went away."""
    last, stable = await mutation.effects(db_pool, scene), 0
    while stable < 5:
        await asyncio.sleep(0.1)
        now = await mutation.effects(db_pool, scene)
        stable = stable + 1 if now == last else 0
        last = now
    return last


def test_every_mutating_rpc_takes_a_request_id_and_is_in_the_table() -> None:
    service = service_pb2.DESCRIPTOR.services_by_name["FeatureStore"]
    mutating = {path.rsplit("/", 1)[-1] for path in mutating_methods(service)}
    assert mutating == {m.rpc for m in MUTATIONS}
    for name in mutating:
        field = service.methods_by_name[name].input_type.fields_by_name.get("request_id")
        assert field is not None and field.type == field.TYPE_STRING, name


@BY_RPC
async def test_a_retry_after_a_lost_reply_applies_once_and_gets_the_reply(
    mutation: _Mutation,
    features: FeatureStoreStub,
    lossy: FeatureStoreStub,
    link: ReplyDroppingLink,
    db_pool: asyncpg.Pool,
) -> None:
    scene = await mutation.prepare(features, db_pool)
    before = await mutation.effects(db_pool, scene)
    rid = str(uuid.uuid4())

    link.drop_next_replies(1)
    code, _ = await _status(mutation.call(lossy, scene, rid, 0))
    assert code == grpc.StatusCode.UNAVAILABLE and link.replies_dropped >= 1
    applied = await _settled(db_pool, mutation, scene)
    assert applied != before, "the first attempt did the work; its reply was lost"

    retried = await mutation.call(features, scene, rid, 0)
    again = await mutation.call(lossy, scene, rid, 0)

    mutation.check(retried)
    assert again == retried
    assert await mutation.effects(db_pool, scene) == applied, "the retries applied nothing new"
    if mutation.stream(scene):
        events = await _events(db_pool, mutation.stream(scene))
        assert events and all(e["causation_id"] == rid for e in events), events


@BY_RPC
async def test_the_same_id_for_another_request_is_refused(
    mutation: _Mutation, features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    scene = await mutation.prepare(features, db_pool)
    rid = str(uuid.uuid4())
    await mutation.call(features, scene, rid, 0)
    applied = await mutation.effects(db_pool, scene)

    code, details = await _status(mutation.call(features, scene, rid, 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"request_id {rid!r} was already used for a different {mutation.rpc}" in details
    other = next(m for m in MUTATIONS if m.rpc != mutation.rpc)
    code, details = await _status(
        other.call(features, await other.prepare(features, db_pool), rid, 0)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"already used for a {mutation.rpc} request" in details
    assert await mutation.effects(db_pool, scene) == applied


@BY_RPC
async def test_concurrent_duplicates_apply_once(
    mutation: _Mutation, features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    scene = await mutation.prepare(features, db_pool)
    rid = str(uuid.uuid4())

    replies = await asyncio.gather(*(mutation.call(features, scene, rid, 0) for _ in range(8)))

    assert all(reply == replies[0] for reply in replies)
    mutation.check(replies[0])
    single = await mutation.prepare(features, db_pool)
    await mutation.call(features, single, str(uuid.uuid4()), 0)
    assert _shape(await mutation.effects(db_pool, scene)) == _shape(
        await mutation.effects(db_pool, single)
    ), "eight duplicates left what one call leaves"


def _shape(effects: tuple[object, ...]) -> object:
    """Effects without the names that differ between two scenes."""
    return [
        len(item) if isinstance(item, tuple | list) else item
        for item in (effects if len(effects) == 2 and isinstance(effects[1], bool) else [effects])
    ]


async def test_malformed_request_ids_are_invalid_argument(features: FeatureStoreStub) -> None:
    for rid in ["has space", "x" * 129, "-leading-dash", "naïve", "a/b"]:
        code, details = await _status(_apply(features, await _nothing(features, None), rid, 0))  # type: ignore[arg-type]
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid request id" in details


async def test_the_sdk_sends_ids_and_retries_lost_replies_safely(
    features: FeatureStoreStub,
    lossy: FeatureStoreStub,
    link: ReplyDroppingLink,
    db_pool: asyncpg.Pool,
) -> None:
    sdk = FeatureStoreClient(lossy, retry=RetryPolicy(first_backoff_s=0.05))
    s = suffix()

    link.drop_next_replies(1)
    await sdk.apply(_repository(s))  # type: ignore[arg-type]
    [event] = await _events(db_pool, f"feature_view-apply_{s}")
    assert event["causation_id"], "sent with a request id"

    scene = await _push_view(features, db_pool)
    link.drop_next_replies(1)
    pushed = await sdk.push(
        f"push_{scene.s}",
        {"loan_id": ["L1"], "event_time": [NOW - timedelta(hours=1)], "v": [4.0]},
    )
    assert pushed.rows_written == 1
    assert await _push_rows(db_pool, scene) == (("L1", 4.0),)

    scene = await _batch_view(features, db_pool)
    link.drop_next_replies(1)
    progress = await sdk.materialize(f"mat_{scene.s}")
    assert progress.done
    assert len(await _logged(db_pool, f"mat_{scene.s}")) == 3

    scene = await _stream_view(features, db_pool)
    link.drop_next_replies(1)
    backfilled = await sdk.backfill(f"bf_{scene.s}")
    assert backfilled.events_used == 1
    assert len(await _backfills(db_pool, scene)) == 1
    assert link.replies_dropped >= 4
