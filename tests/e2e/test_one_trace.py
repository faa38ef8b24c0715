"""One trace spans gRPC call -> event append -> relay publish -> downstream consumer."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings, ServiceName
from libs.db import apply_migrations
from libs.eventstore import ConsumerSpec, DeliveredEvent, DurableConsumer, EventStore
from libs.grpckit import open_channel
from libs.messaging import EventStreamNames
from libs.runtime import ServiceHost
from services.model_registry.events import CATALOG


async def test_one_trace_id_spans_every_hop(
    registry_host: ServiceHost,
    test_settings: LatheSettings,
    span_exporter: InMemorySpanExporter,
    js: JetStreamContext,
    db_pool: asyncpg.Pool,
) -> None:
    # A downstream service with its own schema consumes the registry's events.
    downstream_schema = f"downstream_{uuid.uuid4().hex[:8]}"
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, downstream_schema, EventStore.migrations())
    received: asyncio.Queue[DeliveredEvent] = asyncio.Queue()

    async def handler(event: DeliveredEvent, conn: asyncpg.Connection) -> None:
        await received.put(event)

    names = EventStreamNames(test_settings.namespace, "model_registry")
    consumer = DurableConsumer(
        ConsumerSpec(f"trace-{downstream_schema}", names.stream, names.all_subjects),
        js=js,
        store=EventStore(db_pool, downstream_schema),
        catalog=CATALOG,
        handler=handler,
    )
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(stop))
    model_name = f"traced-{uuid.uuid4().hex[:8]}"

    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("client operation") as root:
        async with open_channel(test_settings.service_addr(ServiceName.MODEL_REGISTRY)) as channel:
            await ModelRegistryStub(channel).CreateModel(
                rr.CreateModelRequest(name=model_name, owner="uw"), timeout=10
            )
    trace_id = root.get_span_context().trace_id
    while True:
        delivered = await asyncio.wait_for(received.get(), timeout=10)
        if getattr(delivered.message, "name", None) == model_name:
            break
    stop.set()
    await consuming

    spans = [s for s in span_exporter.get_finished_spans() if s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in spans}

    def one(kind: SpanKind, name_part: str) -> object:
        matches = [s for s in spans if s.kind == kind and name_part in s.name]
        assert len(matches) == 1, f"expected one {kind} span named *{name_part}*, got {matches}"
        return matches[0]

    client = one(SpanKind.CLIENT, "ModelRegistry/CreateModel")
    server = one(SpanKind.SERVER, "ModelRegistry/CreateModel")
    append = one(SpanKind.INTERNAL, "eventstore.append")
    publish = one(SpanKind.PRODUCER, "model.created publish")
    process = one(SpanKind.CONSUMER, "model.created process")
    assert client.parent.span_id == root.get_span_context().span_id
    assert server.parent.span_id == client.context.span_id
    assert append.parent.span_id == server.context.span_id
    assert publish.parent.span_id == server.context.span_id
    assert process.parent.span_id == publish.context.span_id
    insert_spans = [
        s
        for s in spans
        if s.kind == SpanKind.CLIENT and s.parent and s.parent.span_id == append.context.span_id
    ]
    assert insert_spans, "the append's SQL statement is traced under it"
    assert all(s.parent is None or s.parent.span_id in by_id for s in spans if s is not root)
    assert delivered.event.metadata.traceparent.split("-")[1] == f"{trace_id:032x}"


async def test_every_mutation_appears_once_on_jetstream(
    registry: ModelRegistryStub, test_settings: LatheSettings, js: JetStreamContext
) -> None:
    names = EventStreamNames(test_settings.namespace, "model_registry")
    model_name = f"once-{uuid.uuid4().hex[:8]}"
    await registry.CreateModel(rr.CreateModelRequest(name=model_name, owner="uw"))
    duplicate = registry.CreateModel(rr.CreateModelRequest(name=model_name, owner="uw"))
    try:
        await duplicate
    except grpc.aio.AioRpcError as rejected:
        assert rejected.code() == grpc.StatusCode.ALREADY_EXISTS

    subscription = await js.subscribe(names.subject("model.created"), ordered_consumer=True)
    matching = []
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        try:
            message = await subscription.next_msg(timeout=0.5)
        except TimeoutError:
            if matching:
                break
            continue
        if message.headers and message.headers["Lathe-Stream-Id"] == f"model-{model_name}":
            matching.append(message)
    await subscription.unsubscribe()

    assert len(matching) == 1
    assert matching[0].headers["Lathe-Event-Type"] == "lathe.model_registry.v1.ModelCreated"
