"""`lathe features ...`: feature definitions from the command line."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings
from libs.grpckit import open_channel
from libs.sdk.feature_store import FeatureStoreClient
from libs.sdk.features import load_repository

app = typer.Typer(no_args_is_help=True, help="Plan and apply feature definitions.")
console = Console()
DefinitionsFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="Python file of definitions.")
]
_STYLE = {
    m.CHANGE_ACTION_CREATE: "green",
    m.CHANGE_ACTION_UPDATE: "yellow",
    m.CHANGE_ACTION_NEW_VERSION: "cyan",
    m.CHANGE_ACTION_UNCHANGED: "dim",
    m.CHANGE_ACTION_NOT_IN_REPOSITORY: "dim",
}


def _show(changes: list[m.DefinitionChange]) -> None:
    table = Table("kind", "name", "change", "versions", "details")
    for change in changes:
        action = m.ChangeAction.Name(change.action).removeprefix("CHANGE_ACTION_").lower()
        style = "red" if change.blocked else _STYLE.get(change.action, "")
        label = f"[{style}]{action}{' (blocked)' if change.blocked else ''}[/{style}]"
        versions = (
            f"{change.from_version or '-'} -> {change.to_version}" if change.to_version else ""
        )
        table.add_row(change.kind, change.name, label, versions, "\n".join(change.details))
    console.print(table)


async def _call(request_plan: bool, path: Path) -> list[m.DefinitionChange]:
    settings = LatheSettings()
    repository = load_repository(path)
    metadata = [("lathe-actor", getpass.getuser())]
    if settings.auth_token is not None:
        metadata.append(("authorization", f"Bearer {settings.auth_token.get_secret_value()}"))
    async with open_channel(settings.feature_store_addr) as channel:
        stub = FeatureStoreStub(channel)
        if request_plan:
            plan = await stub.PlanDefinitions(rr.PlanDefinitionsRequest(repository=repository))
            return list(plan.changes)
        applied = await stub.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository), metadata=metadata
        )
        return list(applied.changes)


def _run(request_plan: bool, path: Path) -> list[m.DefinitionChange]:
    try:
        return asyncio.run(_call(request_plan, path))
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error


@app.command()
def plan(path: DefinitionsFile) -> None:
    """Show what `apply` would change, without changing anything."""
    changes = _run(True, path)
    _show(changes)
    if any(c.blocked for c in changes):
        console.print("[red]blocked changes: apply would refuse this repository[/red]")
        raise typer.Exit(1)


@app.command()
def apply(path: DefinitionsFile) -> None:
    """Record the definitions (all or nothing); breaking changes need a new version."""
    _show(_run(False, path))


@app.command()
def materialize(view: Annotated[str, typer.Argument(help="A batch-source feature view.")]) -> None:
    """Load new rows of a view's batch source into the stores, with progress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    async def run() -> None:
        settings = LatheSettings()
        async with open_channel(settings.feature_store_addr) as channel:
            stream = FeatureStoreStub(channel).Materialize(
                rr.MaterializeRequest(feature_view=view),
                metadata=[("lathe-actor", getpass.getuser())],
            )
            with Progress(
                TextColumn(f"materializing {view}"), BarColumn(), MofNCompleteColumn()
            ) as bar:
                task = bar.add_task(view, total=None)
                async for response in stream:
                    progress = response.progress
                    bar.update(
                        task, total=progress.rows_total or None, completed=progress.rows_read
                    )
            console.print(
                f"{progress.rows_written} rows written, {progress.rows_quarantined} quarantined, "
                f"through {progress.through.ToDatetime().isoformat()}"
            )

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error


@app.command()
def backfill(
    view: Annotated[str, typer.Argument(help="A stream-source feature view.")],
    version: Annotated[int, typer.Option(help="The version to backfill (0: the latest).")] = 0,
) -> None:
    """Recompute a stream view's aggregates from its source's logged events."""

    async def run() -> rr.BackfillStreamViewResponse:
        settings = LatheSettings()
        async with open_channel(settings.feature_store_addr) as channel:
            return await FeatureStoreStub(channel).BackfillStreamView(
                rr.BackfillStreamViewRequest(feature_view=view, version=version),
                metadata=[("lathe-actor", getpass.getuser())],
            )

    try:
        with console.status(f"backfilling {view} (its source's streaming pauses meanwhile)"):
            result = asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error
    console.print(
        f"{view} v{result.version}: {result.events_used} of {result.events_read} events used, "
        f"{result.tiles_written} tiles written"
    )
    for reason, count in sorted(result.rejected.items()):
        console.print(f"  rejected ({reason}): {count}")


Kind = Annotated[
    str,
    typer.Argument(help="feature_view, on_demand_view or feature_service."),
]


T = TypeVar("T")


def _client_call(call: Callable[[FeatureStoreClient], Awaitable[T]]) -> T:
    """Run ``call(client)`` against the feature store (with a request id and retries)."""

    async def run() -> T:
        settings = LatheSettings()
        metadata = [("lathe-actor", getpass.getuser())]
        if settings.auth_token is not None:
            metadata.append(("authorization", f"Bearer {settings.auth_token.get_secret_value()}"))
        async with open_channel(settings.feature_store_addr) as channel:
            return await call(FeatureStoreClient(FeatureStoreStub(channel), metadata=metadata))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error


@app.command()
def delete(
    kind: Kind,
    name: Annotated[str, typer.Argument(help="Its name (every version is deleted).")],
    reason: Annotated[str, typer.Option(help="Why, for the event log.")] = "",
) -> None:
    """Delete a definition, every version (refused while a feature service or on-demand
    view uses it; stored values are kept)."""
    version = _client_call(lambda client: client.delete(kind, name, reason=reason))
    console.print(f"deleted {kind} {name} (its latest version was {version})")


@app.command()
def deprecate(
    kind: Kind,
    name: Annotated[str, typer.Argument(help="Its name.")],
    reason: Annotated[str, typer.Option(help="What readers should use instead.")] = "",
    lift: Annotated[bool, typer.Option("--lift", help="Lift the deprecation instead.")] = False,
) -> None:
    """Deprecate a definition: reads keep working and warn with the reason."""
    _client_call(lambda client: client.deprecate(kind, name, reason, lift=lift))
    console.print(f"{'lifted the deprecation of' if lift else 'deprecated'} {kind} {name}")


@app.command()
def drift(
    view: Annotated[str, typer.Argument(help="A feature view.")],
    snapshot: Annotated[str, typer.Option(help="Training snapshot id (sha256:...).")] = "",
) -> None:
    """Statistics of a view's online values, and their drift (PSI) from a training snapshot."""

    async def fetch() -> rr.GetFeatureStatisticsResponse:
        settings = LatheSettings()
        async with open_channel(settings.feature_store_addr) as channel:
            return await FeatureStoreStub(channel).GetFeatureStatistics(
                rr.GetFeatureStatisticsRequest(feature_view=view, snapshot_id=snapshot)
            )

    try:
        response = asyncio.run(fetch())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error
    table = Table("feature", "count", "nulls", "mean", "min", "max", "psi")
    for stats in response.features:
        psi = ""
        if stats.HasField("psi"):
            color = "green" if stats.psi < 0.1 else "yellow" if stats.psi < 0.25 else "red"
            psi = f"[{color}]{stats.psi:.3f}[/{color}]"
        table.add_row(
            stats.feature,
            str(stats.count),
            str(stats.nulls),
            f"{stats.mean:.4g}",
            f"{stats.min:.4g}",
            f"{stats.max:.4g}",
            psi,
        )
    console.print(table)
    console.print(f"expectation violations recorded: {response.violations}")
    console.print("PSI: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift")
