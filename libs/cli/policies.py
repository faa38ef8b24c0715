"""`lathe policies ...`: off-policy evaluation and learning of decision policies.

    lathe policies evaluate credit-line --logs 120d --reward repaid_margin@1
    lathe policies evaluate credit-line --version 3 --logs 2026-03-01..2026-03-08 \
        --reward repaid_margin@1
    lathe policies learn credit-line --logs 120d --reward repaid_margin@1 --policy policy.json

``evaluate`` prints each estimator's value and 95% interval beside the logging policy's
realised value on the same decisions; ``learn`` registers the learned version with those
numbers as metrics (what the registry's policy-value gate reads). Through the SDK's
``PolicyClient`` (libs/sdk/policies.py).

A window without an explicit end ends one censoring window of the reward before now (the
trainer's ``services/trainer/policies/window.py``): every decision in it has its reward or
never will. With 90-day rewards, ``--logs 120d`` reads the 30 days that ended then; an
explicit later end (``START..END``) reads the rewards arrived so far, and the decisions
still pending are left out, counted and warned about (the gate refuses such a version).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings
from libs.grpckit import open_channel
from libs.sdk.policies import LogWindow, PolicyClient

app = typer.Typer(no_args_is_help=True, help="Decision policies: evaluate and learn off-policy.")
console = Console()
Logs = Annotated[
    str,
    typer.Option(
        "--logs",
        help="Decisions to read: a duration back from now (120d, 12h) or START..END in ISO "
        "8601. Without an END the window ends one censoring window of the reward before now "
        "(every reward settled); an END after that leaves the pending decisions out.",
    ),
]
Reward = Annotated[
    str, typer.Option("--reward", help="The reward definition joined, <name>@<version>.")
]
_LABELS = {
    "ips": "IPS",
    "snips": "SNIPS",
    "dr": "DR",
    "dm": "DM (diagnostic)",
    "dr_gain": "DR - logging",
    "logging": "logging policy (realised)",
}


def _window(logs: str, reward: str) -> LogWindow:
    try:
        return LogWindow.parse(logs, reward)
    except ValueError as exc:
        console.print(f"[red]bad option:[/red] {exc}")
        raise typer.Exit(2) from exc


def _run(call):  # type: ignore[no-untyped-def]
    settings = LatheSettings()

    async def run():  # type: ignore[no-untyped-def]
        async with open_channel(settings.trainer_addr) as channel:
            return await call(PolicyClient(TrainerStub(channel), actor="cli"))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]{error.code().name}[/red]: {error.details()}")
        raise typer.Exit(1) from error


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="The policy's registered model name.")],
    logs: Logs,
    reward: Reward,
    version: Annotated[int, typer.Option(help="The version to evaluate (0: the latest).")] = 0,
) -> None:
    """Estimate a policy version's value on logged decisions, beside the logging policy's."""
    window = _window(logs, reward)
    evaluated, evaluation = _run(lambda c: c.evaluate(model, window, version=version))
    console.print(f"{model} v{evaluated} on {evaluation.rows} decisions with rewards")
    console.print(evaluation_table(evaluation))
    _warn_pending(evaluation)


@app.command()
def learn(
    model: Annotated[str, typer.Argument(help="The policy's registered model name.")],
    logs: Logs,
    reward: Reward,
    policy: Annotated[
        Path | None,
        typer.Option(help="policy.json of the new version (default: production's, new salt)."),
    ] = None,
    holdout: Annotated[float, typer.Option(help="Newest share of the logs held out.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seed of the learner.")] = 0,
) -> None:
    """Learn a new version from the logs, evaluate it on the held-out part, register it."""
    window = _window(logs, reward)
    policy_json = policy.read_text() if policy is not None else ""
    version, evaluation = _run(
        lambda c: c.learn(model, window, policy_json=policy_json, holdout=holdout, seed=seed)
    )
    console.print(f"registered {model} v{version}; held-out evaluation on {evaluation.rows} rows")
    console.print(evaluation_table(evaluation))
    _warn_pending(evaluation)


def _warn_pending(evaluation: message_pb2.PolicyEvaluation) -> None:
    """Say so when the window reached decisions still awaiting their reward."""
    if evaluation.excluded_pending <= 0:
        return
    console.print(
        f"[yellow]warning:[/yellow] {evaluation.excluded_pending:,} decisions of the window "
        "still await their reward and were left out: only the outcomes reported early "
        "count, so these estimates are biased, and the registry's policy-value gate refuses "
        "to promote a version evaluated on them. Leave the window's end open or move it "
        "earlier, or wait for the rewards."
    )


def evaluation_table(evaluation: message_pb2.PolicyEvaluation) -> Table:
    """Each estimator's value, interval and standard error, the logging policy's realised
    value beside them, and what was left out (also the demo's decisioning step)."""
    confidence = evaluation.metrics.get("ope.confidence", 0.95)
    table = Table(title=None)
    table.add_column("estimator")
    table.add_column("value", justify="right")
    table.add_column(f"{confidence:.0%} interval", justify="right")
    table.add_column("std error", justify="right")
    by_name = {e.estimator: e for e in evaluation.estimates}
    for name in ("ips", "snips", "dr", "dm", "logging", "dr_gain"):
        e = by_name.get(name)
        if e is None:
            continue
        table.add_row(
            _LABELS[name],
            f"{e.value:+.5f}",
            f"[{e.lower:+.5f}, {e.upper:+.5f}]",
            f"{e.std_error:.5f}",
        )
    table.caption = (
        f"ESS {evaluation.effective_sample_size:,.0f} of {evaluation.rows:,}, max weight "
        f"{evaluation.max_weight:.3g}, unsupported mass {evaluation.unsupported_mass:.3g}; "
        f"production v{evaluation.production_version}; left out: "
        f"{evaluation.excluded_pending} pending, {evaluation.excluded_censored} censored, "
        f"{evaluation.excluded_bad_distribution} bad distributions"
    )
    return table
