"""`lathe demo` / `make demo`: boot the platform and drive the workflow end to end.

Today the workflow is the platform's backbone: a model is registered over gRPC,
its event travels Postgres -> outbox relay -> JetStream to a downstream
subscriber that decodes it with the published protos, and the whole journey is
shown as one trace. The ML lifecycle (features, training, serving) joins this
script as those services land.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nats.js.api import DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from rich.console import Console

from lathe.model_registry.v1 import events_pb2, request_response_pb2, service_pb2_grpc
from libs.cli.render import status_table
from libs.config import LatheSettings
from libs.eventstore.headers import EVENT_TYPE
from libs.grpckit import open_channel
from libs.messaging import EventStreamNames, connect_nats
from libs.platform.runner import Platform
from libs.telemetry import configure_telemetry, extract_context
from libs.telemetry.span_files import read_span_files
from libs.telemetry.trace_tree import build_trace_tree

_SPAN_FLUSH_S = 1.5  # services export spans in batches every 0.5 s


async def run_demo(settings: LatheSettings, console: Console) -> None:
    platform = Platform(settings)
    console.rule("1. Boot the platform")
    state = await platform.up(progress=console.print)
    console.print(status_table(await platform.service_statuses(state)))

    telemetry = configure_telemetry("lathe-demo", traces_dir=platform.home / "traces")
    tracer = trace.get_tracer("lathe.demo")
    nats_client = await connect_nats(state.nats_url, name="lathe-demo")
    try:
        names = EventStreamNames(state.namespace, "model_registry")
        console.rule("2. A downstream team subscribes to registry events")
        console.print(
            f"JetStream subject [bold]{names.all_subjects}[/bold] (stream {names.stream})"
        )
        subscription = await nats_client.jetstream().subscribe(
            names.all_subjects, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
        )

        console.rule("3. Register a model over gRPC")
        model_name = f"credit-default-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        with tracer.start_as_current_span("demo: register a model") as span:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            async with open_channel(settings.model_registry_addr) as channel:
                response = await service_pb2_grpc.ModelRegistryStub(channel).CreateModel(
                    request_response_pb2.CreateModelRequest(
                        name=model_name,
                        owner="underwriting-ml",
                        description="Probability of default for unsecured personal loans",
                        tags={"domain": "underwriting"},
                    ),
                    metadata=[("lathe-actor", "demo")],
                    timeout=10,
                )
        console.print(
            f"created model [bold]{response.model.name}[/bold] owned by {response.model.owner}"
        )

        console.rule("4. The event arrives downstream")
        message = await subscription.next_msg(timeout=10)
        headers = message.headers or {}
        with tracer.start_as_current_span(
            f"{message.subject} process", context=extract_context(headers), kind=SpanKind.CONSUMER
        ):
            event = events_pb2.ModelCreated.FromString(message.data)
        console.print(f"subject: {message.subject}")
        for key in sorted(headers):
            console.print(f"  {key}: {headers[key]}")
        console.print(
            f"decoded {headers.get(EVENT_TYPE)}: name={event.name!r} owner={event.owner!r}"
        )
        await subscription.unsubscribe()
    finally:
        await nats_client.close()
        telemetry.shutdown()

    console.rule("5. One trace across every hop")
    await asyncio.sleep(_SPAN_FLUSH_S)
    tree = build_trace_tree(trace_id, read_span_files(platform.home / "traces"))
    if tree is not None:
        console.print(tree)
    console.print(f"(again any time: lathe trace {trace_id})")
    console.rule("Done")
    console.print(
        "The platform is still up: `lathe status`, `lathe logs model-registry`, `lathe down`."
    )
