"""`lathe models ...`: the model registry from the command line.

Changes go through the SDK's ``RegistryClient``: each command sends one client request
id and retries with it after an ambiguous failure, so a promotion or an approval applies
once even when a reply is lost.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from libs.grpckit import open_channel
from libs.sdk.model_registry import RegistryClient

app = typer.Typer(no_args_is_help=True, help="Browse and promote models in the registry.")
console = Console()
T = TypeVar("T")

Actor = Annotated[
    str,
    typer.Option(
        envvar="LATHE_ACTOR", help="Recorded as the actor of the change (default: $USER)."
    ),
]


def _call(action: Callable[[ModelRegistryStub], Awaitable[T]]) -> T:
    settings = LatheSettings()

    async def run() -> T:
        async with open_channel(settings.model_registry_addr) as channel:
            return await action(ModelRegistryStub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error


def _changes(stub: ModelRegistryStub, actor: str) -> RegistryClient:
    """Changes as ``actor`` (default: the user), with the configured token."""
    token = LatheSettings().auth_token
    return RegistryClient(
        stub,
        actor=actor or getpass.getuser(),
        token=token.get_secret_value() if token is not None else "",
    )


@app.command("list")
def list_models(
    owner: Annotated[str, typer.Option(help="Only this owner's models.")] = "",
    tag: Annotated[str, typer.Option(help="Only models with this tag key.")] = "",
) -> None:
    """Every registered model, with its latest version and aliases."""

    async def fetch(stub: ModelRegistryStub) -> list[object]:
        models, token = [], ""
        while True:
            page = await stub.ListModels(
                rr.ListModelsRequest(owner=owner, tag_key=tag, page_size=1000, page_token=token)
            )
            models += page.models
            if not (token := page.next_page_token):
                return models

    table = Table("model", "owner", "latest", "aliases", "description")
    for model in _call(fetch):
        aliases = ", ".join(f"{k}={v.version}" for k, v in sorted(model.aliases.items()))  # type: ignore[attr-defined]
        table.add_row(
            model.name, model.owner, str(model.latest_version), aliases, model.description
        )  # type: ignore[attr-defined]
    console.print(table)


@app.command()
def show(name: str) -> None:
    """One model: owner, tags, policy, aliases."""
    model = _call(lambda stub: stub.GetModel(rr.GetModelRequest(name=name))).model
    console.print(model)


@app.command()
def versions(name: str, limit: Annotated[int, typer.Option(min=1, max=1000)] = 20) -> None:
    """The newest versions of a model with their metrics and artifacts."""
    page = _call(
        lambda stub: stub.ListModelVersions(
            rr.ListModelVersionsRequest(model_name=name, page_size=limit)
        )
    )
    table = Table("version", "created", "by", "metrics", "artifacts")
    for v in page.model_versions:
        metrics = ", ".join(f"{k}={x:.4g}" for k, x in sorted(v.metrics.items()))
        artifacts = ", ".join(f"{a.name} ({a.size_bytes} B, {a.sha256[:12]})" for a in v.artifacts)
        table.add_row(
            str(v.version),
            v.create_time.ToDatetime().isoformat(" ", "seconds"),
            v.created_by,
            metrics,
            artifacts,
        )
    console.print(table)


@app.command()
def promote(
    name: str,
    alias: str,
    version: int,
    expected: Annotated[
        int | None, typer.Option(help="Version the alias points to now (default: as resolved).")
    ] = None,
    traffic_share: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    actor: Actor = "",
) -> None:
    """Point ALIAS of model NAME at VERSION (gates and approvals apply)."""

    async def move(stub: ModelRegistryStub) -> message_pb2.Alias:
        current = expected
        if current is None:
            try:
                current = (
                    await stub.ResolveAlias(rr.ResolveAliasRequest(model_name=name, alias=alias))
                ).alias.version
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                current = 0
        return await _changes(stub, actor).set_alias(
            rr.SetAliasRequest(
                model_name=name,
                alias=alias,
                version=version,
                expected_version=current,
                traffic_share=traffic_share,
            )
        )

    moved = _call(move)
    console.print(f"{name}: {alias} -> version {moved.version}")


@app.command()
def approve(name: str, version: int, alias: str, comment: str = "", actor: Actor = "") -> None:
    """Record your approval of VERSION for the protected ALIAS."""
    _call(
        lambda stub: _changes(stub, actor).approve(
            rr.ApproveModelVersionRequest(
                model_name=name, version=version, alias=alias, comment=comment
            )
        )
    )
    console.print(f"approved {name} v{version} for {alias}")


@app.command()
def lineage(name: str, version: int) -> None:
    """Where a version came from, its artifacts and the aliases pointing at it."""
    response = _call(
        lambda stub: stub.GetLineage(rr.GetLineageRequest(model_name=name, version=version))
    )
    console.print(response)


@app.command()
def history(name: str) -> None:
    """The model's audit trail, from its event streams."""

    async def fetch(stub: ModelRegistryStub) -> list[object]:
        entries, token = [], ""
        while True:
            page = await stub.GetModelHistory(
                rr.GetModelHistoryRequest(model_name=name, page_size=1000, page_token=token)
            )
            entries += page.entries
            if not (token := page.next_page_token):
                return entries

    table = Table("when", "actor", "event", "summary")
    for entry in _call(fetch):
        table.add_row(
            entry.record_time.ToDatetime().isoformat(" ", "seconds"),  # type: ignore[attr-defined]
            entry.actor,  # type: ignore[attr-defined]
            entry.event_type.rsplit(".", 1)[-1],  # type: ignore[attr-defined]
            entry.summary,  # type: ignore[attr-defined]
        )
    console.print(table)
