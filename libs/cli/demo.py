"""`lathe demo` / `make demo`: boot the platform and drive the workflow end to end.

Today: the platform boots on embedded Postgres + NATS; 10,000 real Lending Club
loans are loaded, their features defined, materialized and served online; two
point-in-time training sets are built from two feature services; a credit-default
model is fitted on each (numpy, exported to ONNX — the trainer service takes this
over when it lands) and registered with its artifacts and lineage (dataset
snapshot, feature service); promotion to the protected `production` alias is
refused by its metric gate and then by the missing second approver, and succeeds
once a reviewer approves; a downstream subscriber receives every registry event
from JetStream and decodes it with the published protos; the promotion is shown
as one trace across processes.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from nats.js.api import DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from rich.console import Console
from rich.table import Table

from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from lathe.model_registry.v1 import events_pb2, message_pb2, service_pb2_grpc
from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.cli.demo_feature_steps import ACTOR, TrainingSet, define_and_ingest, training_set
from libs.cli.demo_model import DemoModel, fit_default_model
from libs.cli.render import status_table
from libs.config import LatheSettings
from libs.grpckit import open_channel
from libs.messaging import EventStreamNames, connect_nats
from libs.platform.runner import Platform
from libs.sdk.feature_store import FeatureStoreClient
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from libs.telemetry import configure_telemetry, extract_context
from libs.telemetry.span_files import read_span_files
from libs.telemetry.trace_tree import build_trace_tree

assert events_pb2.DESCRIPTOR  # registers the event messages with the default descriptor pool
_SPAN_FLUSH_S = 1.5  # services export spans in batches every 0.5 s
_POLICY = message_pb2.PromotionPolicy(
    protected_aliases=[
        message_pb2.ProtectedAlias(
            alias="production",
            gates=[
                message_pb2.MetricGate(
                    metric="auc", comparison=message_pb2.COMPARISON_GREATER_OR_EQUAL, threshold=0.60
                )
            ],
            require_approval=True,
        )
    ]
)


async def run_demo(settings: LatheSettings, console: Console) -> None:
    platform = Platform(settings)
    console.rule("1. Boot the platform")
    state = await platform.up(progress=console.print)
    console.print(status_table(await platform.service_statuses(state)))

    telemetry = configure_telemetry("lathe-demo", traces_dir=platform.home / "traces")
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
        async with open_channel(settings.feature_store_addr) as channel:
            features = FeatureStoreClient(FeatureStoreStub(channel), metadata=ACTOR)
            console.rule("3. Features: define, ingest, materialize, serve online")
            await define_and_ingest(features, state.database_url, console)
            console.rule("4. Point-in-time training sets from the feature store")
            trainings = [
                await training_set(features, service, console)
                for service in ("underwriting_basic", "underwriting_full")
            ]
        async with open_channel(settings.model_registry_addr) as channel:
            registry = service_pb2_grpc.ModelRegistryStub(channel)
            trace_id = await _registry_workflow(registry, trainings, console)
        await _show_downstream(subscription, console)
    finally:
        await nats_client.close()
        telemetry.shutdown()

    console.rule("10. One trace across every hop (the promotion)")
    await asyncio.sleep(_SPAN_FLUSH_S)
    tree = build_trace_tree(trace_id, read_span_files(platform.home / "traces"))
    if tree is not None:
        console.print(tree)
    console.print(f"(again any time: lathe trace {trace_id})")
    console.rule("Done")
    console.print(
        "The platform is still up: `lathe status`, `lathe models list`, "
        "`lathe logs model-registry`, `lathe down`."
    )


async def _registry_workflow(
    registry: service_pb2_grpc.ModelRegistryStub, trainings: list[TrainingSet], console: Console
) -> str:
    console.rule("5. Create a model whose production alias is protected")
    name = f"credit-default-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    await registry.CreateModel(
        rr.CreateModelRequest(
            name=name,
            owner="underwriting-ml",
            description="Probability that a Lending Club loan goes delinquent",
            tags={"domain": "underwriting"},
            policy=_POLICY,
        ),
        metadata=[("lathe-actor", "alice")],
    )
    console.print(f"model [bold]{name}[/bold]; production needs auc >= 0.60 and a second approver")

    console.rule("6. Fit a model on each training set; register with artifacts and lineage")
    for training in trainings:
        fitted = await asyncio.to_thread(fit_default_model, training.table, training.features)
        version = await _register(registry, name, fitted, training)
        console.print(
            f"version {version.version}: {len(training.features)} features "
            f"({training.feature_service}), "
            f"auc={fitted.metrics['auc']:.3f} log_loss={fitted.metrics['log_loss']:.4f} "
            f"({fitted.train_rows} train / {fitted.test_rows} held-out loans); artifacts "
            + ", ".join(f"{a.name} {a.sha256[:12]}" for a in version.artifacts)
        )

    console.rule("7. Promote")
    alice, bob = [("lathe-actor", "alice")], [("lathe-actor", "bob")]
    await _try(
        console,
        "alice: production -> v1",
        registry.SetAlias(
            rr.SetAliasRequest(model_name=name, alias="production", version=1), metadata=alice
        ),
    )
    await _try(
        console,
        "alice: production -> v2",
        registry.SetAlias(
            rr.SetAliasRequest(model_name=name, alias="production", version=2), metadata=alice
        ),
    )
    await _try(
        console,
        "bob approves v2 for production",
        registry.ApproveModelVersion(
            rr.ApproveModelVersionRequest(
                model_name=name, version=2, alias="production", comment="held-out AUC checked"
            ),
            metadata=bob,
        ),
    )
    tracer = trace.get_tracer("lathe.demo")
    with tracer.start_as_current_span("demo: promote to production") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        await _try(
            console,
            "alice: production -> v2",
            registry.SetAlias(
                rr.SetAliasRequest(model_name=name, alias="production", version=2), metadata=alice
            ),
        )
    await _try(
        console,
        "alice: staging -> v1 (unprotected)",
        registry.SetAlias(
            rr.SetAliasRequest(model_name=name, alias="staging", version=1), metadata=alice
        ),
    )
    resolved = await registry.ResolveAlias(
        rr.ResolveAliasRequest(model_name=name, alias="production")
    )
    console.print(f"ResolveAlias({name}, production) -> version {resolved.alias.version}")

    console.rule("8. Download the production artifact, verified end to end")
    received = await RegistryClient(registry).download(name, resolved.alias.version, "model.onnx")
    match = "matches" if received.sha256 == received.artifact.sha256 else "DOES NOT MATCH"
    console.print(
        f"model.onnx: {received.size_bytes} bytes, sha256 {received.sha256[:16]}… {match} "
        "the registry"
    )
    history = await registry.GetModelHistory(rr.GetModelHistoryRequest(model_name=name))
    table = Table("actor", "event", "summary")
    for entry in history.entries:
        table.add_row(entry.actor, entry.event_type.rsplit(".", 1)[-1], entry.summary)
    console.print(table)
    return trace_id


async def _register(
    registry: service_pb2_grpc.ModelRegistryStub,
    name: str,
    fitted: DemoModel,
    training: TrainingSet,
) -> message_pb2.ModelVersion:
    spec = VersionSpec(
        model_name=name,
        description=f"logistic regression on {len(fitted.features)} origination features",
        signature=message_pb2.Signature(
            inputs=[
                message_pb2.TensorSpec(name=f, dtype=message_pb2.DATA_TYPE_FLOAT32)
                for f in fitted.features
            ],
            outputs=[message_pb2.TensorSpec(name="p_default", dtype=message_pb2.DATA_TYPE_FLOAT32)],
        ),
        metrics=fitted.metrics,
        lineage=message_pb2.Lineage(
            training_job_id="demo-local-fit",
            dataset_snapshot_id=training.snapshot_id,
            feature_service=training.feature_service,
            feature_service_version="1",
            code_revision=_git_revision(),
        ),
    )
    artifacts = {
        "model.onnx": ArtifactUpload(message_pb2.ARTIFACT_FORMAT_ONNX, content=fitted.onnx_model),
        "preprocessing.json": ArtifactUpload(
            message_pb2.ARTIFACT_FORMAT_JSON, content=fitted.preprocessing
        ),
    }
    return await RegistryClient(registry, actor="trainer").register_version(spec, artifacts)


async def _try(console: Console, label: str, call: object) -> None:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as refused:
        console.print(f"{label}: [yellow]{refused.code().name}[/yellow] — {refused.details()}")
    else:
        console.print(f"{label}: [green]OK[/green]")


async def _show_downstream(subscription: object, console: Console) -> None:
    console.rule("9. The downstream subscriber received every event")
    table = Table("subject", "decoded payload", "actor")
    while True:
        try:
            message = await subscription.next_msg(timeout=2)  # type: ignore[attr-defined]
        except TimeoutError:
            break
        headers = message.headers or {}
        with trace.get_tracer("lathe.demo").start_as_current_span(
            f"{message.subject} process", context=extract_context(headers), kind=SpanKind.CONSUMER
        ):
            # What any subscriber does: the header names the protobuf message type.
            descriptor = descriptor_pool.Default().FindMessageTypeByName(
                headers["Lathe-Event-Type"]
            )
            decoded = GetMessageClass(descriptor).FromString(message.data)
        table.add_row(message.subject, decoded.DESCRIPTOR.name, headers.get("Lathe-Actor", ""))
    console.print(table)
    await subscription.unsubscribe()  # type: ignore[attr-defined]


def _git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
