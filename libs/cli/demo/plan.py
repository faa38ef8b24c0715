"""The demo's steps, in order, and the loop that runs them.

To add a step, write a module with ``STEP = Step(title, run)`` and put it in ``STEPS``;
what earlier steps made is on ``DemoRun`` (the loans, the labels, the trained versions
by role, the clients), and what the summary should show goes into ``run.report``.
Another model is one more ``JobPlan`` in ``training.JOBS`` (as the sequence model is),
not a step.
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from libs.cli.demo import (
    boot,
    canary,
    decisioning,
    features,
    payments,
    promotion,
    serving,
    tracing,
    training,
)
from libs.cli.demo import training_set as training_set_step
from libs.cli.demo.context import DemoOptions, DemoRun, Step
from libs.config import LatheSettings
from libs.telemetry import configure_telemetry

STEPS: tuple[Step, ...] = (
    boot.STEP,
    features.STEP,
    payments.STEP,
    training_set_step.STEP,
    training.STEP,
    promotion.STEP,
    serving.STEP,
    canary.STEP,
    decisioning.STEP,
    tracing.STEP,
)


async def run_demo(settings: LatheSettings, console: Console, options: DemoOptions) -> DemoRun:
    """Run every step; the platform stays up afterwards (``lathe down`` stops it)."""
    run = DemoRun(settings=settings, console=console, options=options)
    telemetry = configure_telemetry("lathe-demo", traces_dir=settings.home.resolve() / "traces")
    started = time.monotonic()
    timings: list[tuple[str, float]] = []
    try:
        for number, step in enumerate(STEPS, 1):
            console.rule(f"[bold]{number}/{len(STEPS)}. {step.title}")
            began = time.monotonic()
            await step.run(run)
            timings.append((step.title, time.monotonic() - began))
            console.print(f"[dim]({timings[-1][1]:.1f}s)[/dim]")
    finally:
        for cleanup in reversed(run.cleanups):
            try:
                await cleanup()
            except Exception as exc:  # a cleanup never hides the step's own error
                console.print(f"[dim]cleanup: {exc}[/dim]")
        telemetry.shutdown()
    run.report["seconds"] = round(time.monotonic() - started, 1)
    run.report["steps"] = {title: round(seconds, 1) for title, seconds in timings}
    run.report["model"] = run.model_name
    _summary(run)
    if options.report_path is not None:
        options.report_path.write_text(json.dumps(run.report, indent=2, default=str))
    return run


def _summary(run: DemoRun) -> None:
    r = run.report
    run.console.rule("[bold]Summary")
    table = Table(show_header=False)
    table.add_row("model", f"{run.model_name}")
    for job in r.get("jobs", []):
        table.add_row(
            f"{job['role']} ({job['family']})",
            f"job {job['job_id']} -> v{job['version']}, validation auc {job['auc']:.4f} "
            f"(LightGBM {job['lightgbm_auc']:.4f}), {job['seconds']:.0f}s",
        )
    if "held_out" in r:
        h = r["held_out"]
        table.add_row(
            "held-out slice",
            f"{h['rows']:,} loans: offline auc {h['offline_auc']:.4f} = online auc "
            f"{h['online_auc']:.4f} (max score difference {h['max_abs_score_difference']:.1e})",
        )
    if "predict_latency_ms" in r:
        table.add_row(
            "Predict latency",
            "  ".join(f"{k} {v:.2f} ms" for k, v in r["predict_latency_ms"].items()),
        )
    if "canary" in r:
        split = ", ".join(f"{k}: {v:,}" for k, v in sorted(r["canary"]["rows_by_arm"].items()))
        table.add_row("canary", f"{r['canary']['traffic_share']:.0%} share -> {split}")
    if "decisioning" in r:
        d = r["decisioning"]
        dr, truth = d["estimates"]["dr"], d["true_value"]
        worse = "refused" if d["gate"]["worse"] != "OK" else "[red]accepted[/red]"
        table.add_row(
            f"policy {d['model']}",
            f"{d['decisions']:,} decisions, {d['rewards_joined']:,} rewards joined -> learned "
            f"v{d['learned_version']}: DR {dr['value']:+.3f} [{dr['lower']:+.3f}, "
            f"{dr['upper']:+.3f}] vs logging {d['estimates']['logging']['value']:+.3f}; gate "
            f"{worse} v{d['worse_version']}, accepted v{d['learned_version']}; true value "
            f"{truth['learned']:+.3f} vs logging's {truth['logging']:+.3f} ($1,000s)",
        )
    if "trace" in r:
        t = r["trace"]
        table.add_row(
            "one prediction's trace",
            f"{t['trace_id']}: {t['spans']} spans, {len(t['services'])} processes, "
            f"{len(t['event_hops'])} event hops",
        )
    table.add_row("wall time", f"{r['seconds']:.0f}s")
    run.console.print(table)
    run.console.print(
        "The platform is still up: `lathe status`, `lathe models list`, `lathe deployments "
        "list`, `lathe trace <id>`, `lathe down`. The examples in examples/ run against it."
    )
