"""`lathe predict` and `lathe deployments ...`: the inference service from the command line.

    lathe predict credit-default --entity loan_id=LC1 --feature requested_amount=12000
    lathe predict credit-default --entity loan_id=LC1 --entity loan_id=LC2   # two rows
    lathe predict card-fraud --entity card_id=4111,merchant_id=m-9   # a composite key
    lathe predict credit-default -e loan_id=LC1 -f term=36 -f zip='"12345"'   # a string
    lathe deployments list
    lathe deployments show credit-default --alias canary
    lathe deployments wait credit-default --version 7   # after moving the alias

Calls go through the SDK's ``InferenceClient``: a deadline on every call, Predict
retried only where that is safe.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from lathe.inference.v1.service_pb2_grpc import InferenceStub
from libs.config import LatheSettings
from libs.grpckit import open_channel
from libs.sdk.feature_store import INT64_MAX, INT64_MIN, Scalar
from libs.sdk.inference import DeploymentInfo, DeploymentRefused, InferenceClient, PredictRow

deployments = typer.Typer(
    no_args_is_help=True, help="What the inference service serves, and why not."
)
console = Console()
T = TypeVar("T")


def _seconds(value: float) -> float:
    """A --timeout: a finite number of seconds above 0 (typer reads "nan" and "-1" too)."""
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"{value} is not a number of seconds above 0")
    return value


Timeout = Annotated[
    float,
    typer.Option("--timeout", help="Deadline of the call, in seconds.", callback=_seconds),
]


def register(app: typer.Typer) -> None:
    """Add ``predict`` and ``deployments`` to the ``lathe`` command."""
    app.command("predict")(predict)
    app.add_typer(deployments, name="deployments")


def _call(action: Callable[[InferenceClient], Awaitable[T]], timeout_s: float) -> T:
    settings = LatheSettings()

    async def run() -> T:
        async with open_channel(settings.inference_addr) as channel:
            return await action(InferenceClient(InferenceStub(channel), timeout_s=timeout_s))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error


def predict(
    model: Annotated[str, typer.Argument(help="The registered model's name.")],
    entity: Annotated[
        list[str],
        typer.Option(
            "--entity",
            "-e",
            help="One row's entity keys, e.g. loan_id=LC1 (several keys: a=1,b=x). "
            "Repeat for more rows. Digits are int64 keys unless they start with 0 or "
            "--string-keys; quote a value to send it as a string: loan_id='\"42\"'.",
        ),
    ],
    feature: Annotated[
        list[str] | None,
        typer.Option(
            "--feature",
            "-f",
            help="A request-time feature for every row, e.g. requested_amount=12000: "
            "integers are int64 (a float64 feature takes them too), other numbers float64, "
            "true/false bool, digits starting with 0 and anything else a string; quote a "
            "value to send it as a string: zip='\"12345\"'.",
        ),
    ] = None,
    alias: Annotated[str, typer.Option(help="The alias to score with.")] = "production",
    string_keys: Annotated[
        bool, typer.Option("--string-keys", help="Send every key as a string.")
    ] = False,
    no_canary: Annotated[bool, typer.Option("--no-canary", help="Production only.")] = False,
    allow_unknown: Annotated[
        bool,
        typer.Option("--allow-unknown", help="Score unknown entities with the training fills."),
    ] = False,
    timeout: Timeout = 5.0,
) -> None:
    """Score rows of MODEL by entity key: scores, version, arm and decision id per row."""
    try:
        request_features = dict(_pair(f, _feature_value) for f in feature or [])
        rows = [
            PredictRow(
                dict(_pair(k, _string if string_keys else _key_value) for k in e.split(",")),
                request_features,
            )
            for e in entity
        ]
    except ValueError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    result = _call(
        lambda client: client.predict(
            model,
            rows,
            alias=alias,
            disable_canary=no_canary,
            allow_unknown_entities=allow_unknown,
        ),
        timeout,
    )
    outputs = list(result.rows[0].scores) if result.rows else []
    table = Table("row", *outputs, "version", "arm", "decision id", "missing features")
    for i, (source, row) in enumerate(zip(entity, result.rows, strict=True)):
        table.add_row(
            f"{i}: {source}",
            *(f"{row.scores[name]:.6g}" for name in outputs),
            str(row.model_version),
            row.arm,
            row.decision_id,
            ", ".join(row.missing_features),
        )
    console.print(table)
    if result.trace_id:
        console.print(f"trace {result.trace_id} (`lathe trace {result.trace_id}`)")


@deployments.command("list")
def list_deployments(
    model: Annotated[str, typer.Option(help="Only this model's deployments.")] = "",
    timeout: Timeout = 5.0,
) -> None:
    """Every followed alias: which version serves, on which runtime, and failures."""
    answer = _call(lambda client: client.list_deployments(model), timeout)
    table = Table("model", "alias", "state", "serving", "requested", "previous", "runtime", "why")
    for d in answer.deployments:
        table.add_row(
            d.model_name,
            d.alias,
            _state(d),
            _version(d.serving_version),
            _version(d.requested_version),
            _version(d.previous_version),
            d.runtime,
            f"v{d.failure.version} refused at {d.failure.stage}: {d.failure.reason}"
            if d.failure
            else "",
        )
    console.print(table)
    console.print("ready" if answer.ready else "[yellow]not ready[/yellow]: production loading")


@deployments.command("show")
def show_deployment(
    model: str,
    alias: Annotated[str, typer.Option(help="Which alias.")] = "production",
    timeout: Timeout = 5.0,
) -> None:
    """One deployment in full: versions, runtime and its parity, features, last failure."""
    d = _call(lambda client: client.get_deployment(model, alias), timeout)
    table = Table("", "", show_header=False, box=None)
    rows = [
        ("deployment", f"{d.model_name}/{d.alias}"),
        ("state", _state(d)),
        ("serving", _version(d.serving_version)),
        ("requested", _version(d.requested_version)),
        ("previous (rollback)", _version(d.previous_version)),
        ("traffic share", f"{d.traffic_share:g}" if d.alias == "canary" else "—"),
        ("runtime", f"{d.runtime} {d.precision}, {d.threads} thread(s)" if d.runtime else "—"),
        ("runtime chosen because", d.selection_reason or "—"),
        ("engine key", d.engine_key or "—"),
        ("parity", f"max |Δ| {d.parity_max_abs_diff:.3g} (tolerance {d.parity_tolerance:g})"),
        ("loaded in", f"{d.load_seconds:.2f} s"),
        ("active since", d.activated_at.isoformat(" ", "seconds") if d.activated_at else "—"),
        ("features", f"{d.feature_service} v{d.feature_service_version}: "),
        ("", ", ".join(d.feature_names)),
    ]
    if d.failure:
        rows.append(
            ("last failure", f"v{d.failure.version} at {d.failure.stage}: {d.failure.reason}")
        )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@deployments.command("wait")
def wait_for_version(
    model: str,
    version: Annotated[int, typer.Option(help="The version that should serve.")],
    alias: Annotated[str, typer.Option(help="Which alias.")] = "production",
    timeout: Annotated[
        float,
        typer.Option("--timeout", help="How long to wait, in seconds.", callback=_seconds),
    ] = 120.0,
) -> None:
    """Until VERSION serves as ALIAS (e.g. after a promotion); exits 1 at once when
    inference refused that version, with the stage and the reason."""

    async def wait(client: InferenceClient) -> DeploymentInfo:
        return await client.wait_until_serving(model, version, alias=alias, timeout_s=timeout)

    try:
        d = _call(wait, 5.0)
    except (DeploymentRefused, TimeoutError) as error:
        console.print(f"[red]{type(error).__name__}[/red]: {error}")
        raise typer.Exit(1) from error
    console.print(
        f"{d.model_name} v{d.serving_version} serves as {d.alias}: {d.runtime} {d.precision}, "
        f"loaded in {d.load_seconds:.2f} s, parity max |Δ| {d.parity_max_abs_diff:.3g}"
    )


def _state(d: DeploymentInfo) -> str:
    color = {"serving": "green", "loading": "yellow", "failed": "red"}.get(d.state, "white")
    return f"[{color}]{d.state}[/{color}]" + ("" if d.warm else " (cold)")


def _version(version: int) -> str:
    return f"v{version}" if version else "—"


def _pair(text: str, parse: Callable[[str], Scalar]) -> tuple[str, Scalar]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{text!r} is not name=value")
    try:
        return name.strip(), parse(value.strip())
    except ValueError as error:
        raise ValueError(f"{text}: {error}") from None


def _key_value(text: str) -> str | int:
    """A quoted value: the string inside; a number (``_NUMBER``): an int64; else the text."""
    quoted = _unquoted(text)
    if quoted is not None:
        return quoted
    return _int64(text) if _NUMBER.fullmatch(text) else text


def _feature_value(text: str) -> Scalar:
    """As ``_key_value``, and true/false are bools, other numbers floats."""
    quoted = _unquoted(text)
    if quoted is not None:
        return quoted
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if _DIGITS.fullmatch(text):
        return _int64(text) if _NUMBER.fullmatch(text) else text
    try:
        return float(text)
    except ValueError:
        return text


def _string(text: str) -> str:
    """--string-keys: the text (a quoted value: the string inside)."""
    quoted = _unquoted(text)
    return text if quoted is None else quoted


_DIGITS = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(0|[1-9][0-9]*)")
"""Integer text that is a number: digits with a leading zero (02139, 00042) name
something, a zip code or an id, and stay strings."""


def _int64(text: str) -> int:
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{text} does not fit an int64 (quote it for a string: '\"{text}\"')")
    return value


def _unquoted(text: str) -> str | None:
    """The text inside double or single quotes ("02139"), else None."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return None
