"""`lathe train ...`: submit training jobs from spec files and follow them live.

``submit`` and ``cancel`` go through the SDK's ``TrainerClient``: each sends one client
request id (``--request-id``, or a fresh one) and retries with it after an ambiguous
failure, so a lost reply never queues a second job. If the trainer stays unreachable,
the command prints the id: running it again with ``--request-id`` is safe.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings
from libs.grpckit import open_channel
from libs.sdk.retries import AMBIGUOUS, new_request_id
from libs.sdk.trainer import SpecError, TrainerClient, load_spec

app = typer.Typer(no_args_is_help=True, help="Train models: submit job specs, follow, cancel.")
console = Console()
T = TypeVar("T")

Actor = Annotated[
    str, typer.Option(envvar="LATHE_ACTOR", help="Recorded as who did it (default: $USER).")
]
RequestId = Annotated[
    str,
    typer.Option(
        help="Client request id of this change (default: a fresh one); pass the one a failed "
        "run printed to retry it safely."
    ),
]


def _call(
    action: Callable[[TrainerClient], Awaitable[T]], actor: str = "", request_id: str = ""
) -> T:
    settings = LatheSettings()
    token = settings.auth_token.get_secret_value() if settings.auth_token else ""

    async def run() -> T:
        async with open_channel(settings.trainer_addr) as channel:
            client = TrainerClient(
                TrainerStub(channel), actor=actor or getpass.getuser(), token=token
            )
            return await action(client)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        if request_id and error.code() in AMBIGUOUS:
            console.print(
                f"it may have been applied: run the command again with --request-id {request_id} "
                "to retry it without applying it twice"
            )
        raise typer.Exit(1) from error


def state_name(state: int) -> str:
    return message_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()  # type: ignore[arg-type]


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="A job spec: .yaml, .toml or .json.")],
    watch_job: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow it live.")] = True,
    actor: Actor = "",
    request_id: RequestId = "",
) -> None:
    """Validate and queue a training job, then follow it with a progress bar."""
    try:
        parsed = load_spec(spec)
    except (OSError, SpecError) as error:
        console.print(f"[red]cannot read the spec[/red]: {error}")
        raise typer.Exit(2) from error
    request_id = request_id or new_request_id()
    job = _call(lambda client: client.submit(parsed, request_id=request_id), actor, request_id)
    console.print(f"job [bold]{job.job_id}[/bold] queued (spec {job.spec_digest[:19]}…)")
    if watch_job:
        _watch(job.job_id, parsed.optimization.epochs)


@app.command()
def watch(job_id: Annotated[str, typer.Argument(help="The job to follow.")]) -> None:
    """Replay a job's events from the start, then follow it live until it ends."""
    job = _call(lambda client: client.get(job_id))
    _watch(job_id, job.spec.optimization.epochs)


def _watch(job_id: str, epochs: int) -> None:
    final = _call(lambda client: _follow(client, job_id, epochs))
    if final != message_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)


async def _follow(client: TrainerClient, job_id: str, epochs: int) -> int:
    state = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("queued", total=max(epochs, 1), detail="")
        async for event in client.watch(job_id):
            state = event.state
            progress.update(bar, description=state_name(state))
            line = describe_event(event)
            if event.HasField("epoch_completed"):
                e = event.epoch_completed
                progress.update(
                    bar,
                    completed=e.epoch,
                    detail=f"step {e.step}  loss {e.train_loss:.4f}  val auc {e.validation_auc:.4f}"
                    f"  {e.samples_per_second:,.0f} samples/s",
                )
            elif line:
                progress.console.print(line)
    return state


def describe_event(event: rr.WatchTrainingJobResponse) -> str:
    """One readable line for a job event worth a line of its own ("" for the rest)."""
    kind = event.WhichOneof("event")
    match kind:
        case "dataset_prepared":
            d = event.dataset_prepared
            return (
                f"dataset {d.dataset_snapshot_id[:19]}…: {d.train_rows} training / "
                f"{d.validation_rows} validation rows, {len(d.feature_names)} features "
                f"(feature service v{d.feature_service_version})"
            )
        case "started":
            s = event.started
            resume = (
                f", resuming from epoch {s.resume_epoch} step {s.resume_step}"
                if s.resume_checkpoint_sha256
                else ""
            )
            return (
                f"attempt {s.attempt} ({s.reason}): {s.world_size} x {s.launcher} worker(s), "
                f"{s.threads_per_process} thread(s) each{resume}"
            )
        case "attempt_failed":
            return f"[yellow]attempt failed[/yellow]: {event.attempt_failed.reason}"
        case "evaluated":
            m, b = event.evaluated.metrics, event.evaluated.baseline_metrics
            return "validation: " + "  ".join(
                f"{k} {m[k]:.4f} (lightgbm {b.get(k, float('nan')):.4f})" for k in sorted(m)
            )
        case "exported":
            x = event.exported
            return f"exported ONNX opset {x.opset}; |onnx - torch| max {x.parity_max_abs_diff:.2e}"
        case "registered":
            r = event.registered
            return f"[green]registered {r.model_name} version {r.version}[/green]"
        case "failed":
            return f"[red]failed[/red]: {event.failed.reason}"
        case "cancelled":
            return f"[yellow]cancelled[/yellow]: {event.cancelled.reason}"
    return ""


@app.command("list")
def list_jobs(
    model: Annotated[str, typer.Option(help="Only this model's jobs.")] = "",
    state: Annotated[str, typer.Option(help="Only jobs in this state (e.g. training).")] = "",
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """Training jobs, newest first."""
    wanted = 0
    if state:
        try:
            wanted = message_pb2.JobState.Value(f"JOB_STATE_{state.upper()}")
        except ValueError:
            names = [state_name(v) for v in message_pb2.JobState.values() if v]
            console.print(f"unknown state {state!r}; one of {', '.join(names)}")
            raise typer.Exit(2) from None
    jobs = _call(lambda client: client.list(model_name=model, state=wanted, limit=limit))
    table = Table("job", "model", "state", "epoch", "auc", "lightgbm auc", "version", "created")
    for job in jobs:
        table.add_row(
            job.job_id,
            job.spec.model_name,
            state_name(job.state),
            f"{job.epoch}/{job.spec.optimization.epochs}",
            f"{job.metrics['auc']:.4f}" if "auc" in job.metrics else "",
            f"{job.baseline_metrics['auc']:.4f}" if "auc" in job.baseline_metrics else "",
            str(job.model_version or ""),
            job.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


@app.command()
def show(job_id: Annotated[str, typer.Argument(help="The job.")]) -> None:
    """One job: its state, data, metrics next to the baseline, and where it was registered."""
    job = _call(lambda client: client.get(job_id))
    table = Table(show_header=False)
    rows = [
        ("job", job.job_id),
        ("state", state_name(job.state)),
        ("model", f"{job.spec.model_name} ({job.spec.model.family})"),
        ("feature service", job.spec.feature_service),
        ("dataset snapshot", job.dataset_snapshot_id),
        ("rows", f"{job.train_rows} training / {job.validation_rows} validation"),
        ("attempts", str(job.attempts)),
        ("epoch", f"{job.epoch}/{job.spec.optimization.epochs} (step {job.step})"),
        ("threads per process", str(job.threads_per_process)),
        ("spec digest", job.spec_digest),
        ("submitted by", job.submitted_by),
    ]
    rows += [
        (f"{k}", f"{v:.4f} (lightgbm {job.baseline_metrics.get(k, float('nan')):.4f})")
        for k, v in sorted(job.metrics.items())
    ]
    if job.model_version:
        rows.append(("registered", f"{job.spec.model_name} version {job.model_version}"))
    if job.failure_reason:
        rows.append(("failure", job.failure_reason))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job.")],
    reason: Annotated[str, typer.Option(help="Recorded with the cancellation.")] = "",
    actor: Actor = "",
    request_id: RequestId = "",
) -> None:
    """Stop a job's workers and record it cancelled."""
    request_id = request_id or new_request_id()
    job = _call(
        lambda client: client.cancel(job_id, reason, request_id=request_id), actor, request_id
    )
    console.print(f"job {job.job_id}: {state_name(job.state)}")
