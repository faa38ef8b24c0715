"""What the demo's steps share: the platform's clients and what earlier steps found.

Each step (one module under ``libs/cli/demo/``) reads what it needs from ``DemoRun`` and
records what it produced on it; ``DemoRun.report`` collects the figures the summary and
``lathe demo --report`` print.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.cli.demo.downstream import Downstream
from libs.config import LatheSettings
from libs.platform.state import PlatformState
from libs.sdk.feature_store import FeatureStoreClient
from libs.sdk.inference import InferenceClient
from libs.sdk.trainer import TrainerClient

ACTOR = "alice"
REVIEWER = "bob"
FEATURE_SERVICE = "underwriting"


@dataclass(frozen=True)
class DemoOptions:
    """How big a run is. The defaults are the full demo; the test suite runs it smaller."""

    loans: int = 10_000
    epochs: int = 4
    latency_calls: int = 300
    report_path: Path | None = None


@dataclass(frozen=True)
class TrainedVersion:
    """What one training job produced."""

    role: str
    """``champion`` (goes to production), ``challenger`` (the canary) or an extension's."""
    job_id: str
    family: str
    version: int
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    snapshot_id: str
    seconds: float


@dataclass
class Clients:
    features: FeatureStoreClient
    registry: ModelRegistryStub
    trainer: TrainerClient
    inference: InferenceClient


@dataclass
class DemoRun:
    settings: LatheSettings
    console: Console
    options: DemoOptions
    state: PlatformState | None = None
    clients: Clients | None = None
    run_id: str = ""
    model_name: str = ""
    loans: list[str] = field(default_factory=list)
    """This run's loans, in order of issue."""
    labels_after: datetime | None = None
    """Every review (label) time of this run is after it."""
    validation_start: datetime | None = None
    validation_loans: list[str] = field(default_factory=list)
    labels: dict[str, bool] = field(default_factory=dict)
    trained: dict[str, TrainedVersion] = field(default_factory=dict)
    """Role -> what its job registered."""
    report: dict[str, Any] = field(default_factory=dict)
    downstream: Downstream | None = None
    """The downstream team's subscriber (registry events, prediction logs)."""
    cleanups: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    """Run in reverse order when the demo ends, however it ends."""

    @property
    def c(self) -> Clients:
        assert self.clients is not None, "the boot step connects the clients"
        return self.clients

    @contextmanager
    def progress(self, description: str, total: float | None) -> Iterator[Bar]:
        """A live progress bar (a spinner while ``total`` is None) for one piece of work."""
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        ) as progress:
            yield Bar(progress, progress.add_task(description, total=total, detail=""))


@dataclass
class Bar:
    """One task of a live progress display."""

    progress: Progress
    task: TaskID
    completed: float = 0.0

    def update(
        self, completed: float | None = None, *, total: float | None = None, detail: str = ""
    ) -> None:
        """Move to ``completed`` (and/or a new ``total``); ``detail`` replaces the note."""
        if completed is not None:
            self.completed = completed
        fields = {"detail": detail} if detail else {}
        self.progress.update(self.task, completed=completed, total=total, **fields)

    def advance(self, amount: float = 1.0) -> None:
        self.completed += amount
        self.progress.update(self.task, completed=self.completed)


@dataclass(frozen=True)
class Step:
    """One step of the demo: a title and what it does."""

    title: str
    run: Callable[[DemoRun], Awaitable[None]]
