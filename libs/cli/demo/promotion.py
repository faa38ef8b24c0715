"""Step: lineage, the promotion gate and an approval; the inference service picks the
promoted version up from the registry's alias event."""

from __future__ import annotations

import time

import grpc
from opentelemetry import trace
from rich.table import Table

from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.cli.demo.context import ACTOR, REVIEWER, Bar, DemoRun, Step
from libs.cli.demo.training import AUC_GATE
from libs.sdk.inference import DeploymentInfo, DeploymentRefused

_DEPLOY_PATIENCE_S = 120.0


async def promote(run: DemoRun) -> None:
    champion = run.trained["champion"]
    lineage = await run.c.registry.GetLineage(
        rr.GetLineageRequest(model_name=run.model_name, version=champion.version)
    )
    table = Table(show_header=False, title=f"GetLineage({run.model_name} v{champion.version})")
    for key, value in (
        ("training job", lineage.lineage.training_job_id),
        ("dataset snapshot", lineage.lineage.dataset_snapshot_id),
        (
            "feature service",
            f"{lineage.lineage.feature_service} v{lineage.lineage.feature_service_version}",
        ),
        ("code revision", lineage.lineage.code_revision),
        ("artifacts", ", ".join(f"{a.name} {a.sha256[:12]}" for a in lineage.artifacts)),
    ):
        table.add_row(key, value)
    run.console.print(table)

    auc = champion.metrics.get("auc", 0.0)
    run.console.print(
        f"gate: validation auc {auc:.4f} >= {AUC_GATE} "
        + ("[green]passes[/green]" if auc >= AUC_GATE else "[red]fails[/red]")
        + "; approval: still needed"
    )
    alice, bob = [("lathe-actor", ACTOR)], [("lathe-actor", REVIEWER)]
    to_production = rr.SetAliasRequest(
        model_name=run.model_name, alias="production", version=champion.version
    )
    await attempt(
        run,
        f"{ACTOR}: production -> v{champion.version}",
        run.c.registry.SetAlias(to_production, metadata=alice),
    )
    await attempt(
        run,
        f"{REVIEWER} approves v{champion.version} for production",
        run.c.registry.ApproveModelVersion(
            rr.ApproveModelVersionRequest(
                model_name=run.model_name,
                version=champion.version,
                alias="production",
                comment=f"validation auc {champion.metrics.get('auc', 0):.3f} checked",
            ),
            metadata=bob,
        ),
    )
    promoted_at = time.monotonic()
    with trace.get_tracer("lathe.demo").start_as_current_span("demo: promote") as span:
        run.report["promotion_trace_id"] = f"{span.get_span_context().trace_id:032x}"
        await attempt(
            run,
            f"{ACTOR}: production -> v{champion.version}",
            run.c.registry.SetAlias(to_production, metadata=alice),
            required=True,
        )
    with run.progress(
        "inference follows the alias event (lathe.model_registry.alias.set)", None
    ) as bar:
        deployment = await wait_for_deployment(run, "production", champion.version, bar)
    seconds = time.monotonic() - promoted_at
    run.console.print(
        f"inference serves v{deployment.serving_version} for production {seconds:.1f}s after "
        f"the promotion: {deployment.runtime}, loaded in {deployment.load_seconds:.2f}s, "
        f"|onnx parity| {deployment.parity_max_abs_diff:.1e}"
    )
    run.report["promotion"] = {
        "version": champion.version,
        "seconds_to_serving": round(seconds, 2),
    }


async def wait_for_deployment(
    run: DemoRun, alias: str, version: int, bar: Bar, *, model_name: str = ""
) -> DeploymentInfo:
    """Until the inference service serves ``version`` for ``alias`` (warm) of
    ``model_name`` (default: the run's model)."""
    model_name = model_name or run.model_name
    try:
        return await run.c.inference.wait_until_serving(
            model_name,
            version,
            alias=alias,
            timeout_s=_DEPLOY_PATIENCE_S,
            on_progress=lambda where: bar.update(detail=where),
        )
    except TimeoutError as late:
        raise RuntimeError(f"{late}; see `lathe logs inference`") from late
    except DeploymentRefused as refused:
        raise RuntimeError(str(refused)) from refused


async def attempt(run: DemoRun, label: str, call: object, *, required: bool = False) -> str:
    """Await a registry call and print how it went: "OK", or the refusal's code and
    details (raised instead when ``required``); returns the same words."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as refused:
        run.console.print(f"{label}: [yellow]{refused.code().name}[/yellow] — {refused.details()}")
        if required:
            raise RuntimeError(f"{label} was refused: {refused.details()}") from refused
        return f"{refused.code().name}: {refused.details()}"
    run.console.print(f"{label}: [green]OK[/green]")
    return "OK"


STEP = Step("Promotion: lineage, the gate, an approval; inference picks it up", promote)
