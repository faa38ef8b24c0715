"""The `lathe` command: run the platform on one machine and look inside it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console

from libs.cli import features, inference, models, policies, train
from libs.cli.render import status_table
from libs.config import LatheSettings, ServiceName
from libs.platform.runner import Platform, PlatformError
from libs.platform.state import PlatformState
from libs.telemetry.span_files import read_span_files
from libs.telemetry.trace_tree import build_trace_tree

app = typer.Typer(no_args_is_help=True, help="Lathe: the ML platform, on one machine.")
app.add_typer(models.app, name="models")
app.add_typer(features.app, name="features")
app.add_typer(train.app, name="train")
app.add_typer(policies.app, name="policies")
inference.register(app)  # `lathe predict`, `lathe deployments`
console = Console()


def _platform() -> Platform:
    return Platform(LatheSettings())


@app.command()
def up(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for SERVING.")] = 120.0,
) -> None:
    """Start Postgres, NATS and the four services; return once all are SERVING."""
    try:
        asyncio.run(_platform().up(timeout_s=timeout, progress=console.print))
    except PlatformError as exc:
        console.print(f"[red]lathe up failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print("[green]Lathe is up.[/green] `lathe status` shows it; `lathe down` stops it.")


@app.command()
def down() -> None:
    """Stop everything `lathe up` started."""
    asyncio.run(_platform().down(progress=console.print))


@app.command()
def status() -> None:
    """Each service's process and health, and where Postgres and NATS are."""
    platform = _platform()
    state = PlatformState.load(platform.home)
    if state is None:
        console.print("the platform is not up (`lathe up` starts it)")
        raise typer.Exit(1)
    statuses = asyncio.run(platform.service_statuses(state))
    console.print(status_table(statuses))
    console.print(f"Postgres: {state.database_url}\nNATS:     {state.nats_url}")
    if not all(s.health == "SERVING" for s in statuses):
        raise typer.Exit(1)


@app.command()
def logs(
    service: Annotated[
        str, typer.Argument(help="feature-store, model-registry, trainer or inference")
    ],
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
) -> None:
    """Print (and optionally follow) a service's log."""
    names = {name.display_name: name for name in ServiceName}
    if service not in names:
        console.print(f"unknown service {service!r}; choose one of {', '.join(names)}")
        raise typer.Exit(2)
    path = _platform().home / "logs" / f"{service}.log"
    if not path.exists():
        console.print(f"no log at {path}: has `lathe up` run with this LATHE_HOME?")
        raise typer.Exit(1)
    with path.open(errors="replace") as handle:
        for line in handle.readlines()[-lines:]:
            print(line, end="")
        while follow:
            line = handle.readline()
            if line:
                print(line, end="")
            else:
                time.sleep(0.2)


@app.command("trace")
def show_trace(
    trace_id: Annotated[
        str, typer.Argument(help="32 hex digits, as printed by the demo or in logs")
    ],
) -> None:
    """Render one trace, gathered from every process's span file, as a tree."""
    traces_dir = _platform().home / "traces"
    tree = build_trace_tree(trace_id.lower(), read_span_files(traces_dir))
    if tree is None:
        console.print(
            f"no spans of trace {trace_id} under {traces_dir} (spans reach the files about "
            "half a second after they end; with OTEL_EXPORTER_OTLP_ENDPOINT set they go to "
            "the collector)"
        )
        raise typer.Exit(1)
    console.print(tree)


@app.command()
def demo(
    stop: Annotated[bool, typer.Option("--down", help="Stop the platform afterwards.")] = False,
    loans: Annotated[int, typer.Option(help="How many of the 10,000 loans to use.", min=200)] = (
        10_000
    ),
    epochs: Annotated[int, typer.Option(help="Training epochs per model.", min=1)] = 4,
    latency_calls: Annotated[int, typer.Option(help="Predict calls timed one by one.", min=1)] = (
        300
    ),
    report: Annotated[
        Path | None, typer.Option(help="Also write what the demo measured as JSON here.")
    ] = None,
) -> None:
    """The main job: boot the platform and drive an underwriting model's life end to end."""
    from libs.cli.demo.context import DemoOptions
    from libs.cli.demo.plan import run_demo

    options = DemoOptions(
        loans=loans, epochs=epochs, latency_calls=latency_calls, report_path=report
    )
    try:
        asyncio.run(run_demo(LatheSettings(), console, options))
    except (PlatformError, RuntimeError) as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    except grpc.aio.AioRpcError as exc:
        console.print(
            f"[red]demo failed:[/red] {exc.code().name}: {exc.details()} "
            "(`lathe status`, `lathe logs <service>`)"
        )
        raise typer.Exit(1) from exc
    finally:
        if stop:
            asyncio.run(_platform().down(progress=console.print))


def main() -> None:
    app()
