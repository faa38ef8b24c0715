"""The deployment loader's scheduling: what takes effect at once, what waits for a load,
what a load that finished too late does, refusals, outages, recording and shutdown.

Everything the loader depends on is a small fake here: the read model is a dict, loads
are gated per version, the recorder keeps what it is given (and can fail on cue).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
import pytest

from libs.errors import Unavailable
from services.inference.app import loader as loader_module
from services.inference.app.loader import DeploymentLoader
from services.inference.app.loading import Loaded, LoadFailure
from services.inference.app.model import LoadedModel
from services.inference.app.serving import ServingTable, Slot
from services.inference.domain.deployment import Deployment
from services.inference.domain.parity import ParityResult
from services.inference.runtimes.base import RuntimeInfo
from services.inference.runtimes.build import RuntimeSettings
from services.inference.runtimes.keys import BatchProfile

MODEL, ALIAS = "credit", "production"


class FakeRuntime:
    def __init__(self) -> None:
        self.info = RuntimeInfo("onnxruntime_cpu", threads=1)
        self.closed = False

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class FakeModel:
    """What the loader reads of a loaded version."""

    version: int
    runtime: FakeRuntime = field(default_factory=FakeRuntime)


class Loads:
    """``load_version`` stand-in: counts loads, holds a version behind its gate, and
    raises what ``failures`` says for it (once per entry)."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.failures: dict[int, list[BaseException]] = {}
        self.made: dict[int, FakeModel] = {}

    def hold(self, version: int) -> asyncio.Event:
        self.gates[version] = asyncio.Event()
        return self.gates[version]

    async def __call__(self, registry: object, model_name: str, version: int, **_: Any) -> Loaded:
        self.calls.append(version)
        if version in self.gates:
            await self.gates[version].wait()
        if self.failures.get(version):
            raise self.failures[version].pop(0)
        model = self.made[version] = FakeModel(version)
        return Loaded(cast(LoadedModel, model), ParityResult(0.0, 1e-5, 0), 0.01)


class Recorder:
    """Keeps the outcomes it records; ``fail`` raises these first, one per call."""

    def __init__(self) -> None:
        self.recorded: list[tuple[int, str, int]] = []
        self.fail: list[BaseException] = []
        self.calls = 0

    async def record_outcome(
        self, model_name: str, alias: str, revision: int, outcome: Any, metadata: Any
    ) -> bool:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        self.recorded.append((revision, type(outcome).__name__, outcome.version))
        return True


@dataclass
class World:
    loader: DeploymentLoader
    table: ServingTable
    loads: Loads
    recorder: Recorder
    deployments: dict[tuple[str, str], Deployment]
    revision: int = 0

    @property
    def slot(self) -> Slot:
        return self.table.ensure(MODEL, ALIAS)

    def request(self, version: int, share: float = 0.0) -> int:
        """The alias moves to ``version`` (0: removed); its request revision."""
        self.revision += 2  # a request and, in the real stream, room for an outcome
        self.deployments[(MODEL, ALIAS)] = Deployment(
            MODEL,
            ALIAS,
            stream_version=self.revision,
            request_revision=self.revision,
            requested_version=version,
            traffic_share=share,
            removed=version == 0,
        )
        return self.revision


async def until(condition: Callable[[], bool], what: str, within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {within_s}s: {what}"
        await asyncio.sleep(0.005)


async def polls(n: int = 5) -> None:
    """Let the loader poll a few more times (it polls every 5 ms here)."""
    await asyncio.sleep(0.005 * n)


@asynccontextmanager
async def running() -> AsyncIterator[World]:
    deployments: dict[tuple[str, str], Deployment] = {}

    async def read(pool: asyncpg.Pool) -> list[Deployment]:
        return list(deployments.values())

    loads, recorder, table = Loads(), Recorder(), ServingTable()
    loader = DeploymentLoader(
        pool=cast(asyncpg.Pool, None),
        table_=table,
        recorder=recorder,  # type: ignore[arg-type]
        registry=None,  # type: ignore[arg-type]
        follows=lambda model, alias: True,
        preference=("onnxruntime_cpu",),
        runtime=RuntimeSettings(1, "fp32", BatchProfile(1, 64, 1024)),
        poll_interval_s=0.005,
        gpu_probe=False,
        load=loads,
        read_deployments=read,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(loader.run(stop))
    try:
        yield World(loader, table, loads, recorder, deployments)
    finally:
        stop.set()
        await task


async def serving(world: World, version: int) -> None:
    revision = world.request(version)
    await until(
        lambda: world.slot.current is not None and world.slot.current.version == version,
        f"v{version} serves",
    )
    await until(lambda: (revision, "DeploymentActivated", version) in world.recorder.recorded, "")


async def test_a_rollback_during_a_load_takes_effect_at_once_and_the_load_is_discarded() -> None:
    async with running() as world:
        await serving(world, 1)
        await serving(world, 2)
        release = world.loads.hold(3)
        world.request(3)
        await until(lambda: world.slot.loading, "v3 loads")
        rollback = world.request(1)  # v1 is kept loaded: no load needed
        await until(lambda: world.slot.current.version == 1, "rolled back")  # type: ignore[union-attr]
        assert world.slot.loading and world.slot.handled_revision == rollback
        await until(lambda: (rollback, "DeploymentActivated", 1) in world.recorder.recorded, "")
        release.set()
        await until(lambda: not world.slot.loading, "the v3 load ends")
        await polls()
        assert world.slot.current.version == 1  # type: ignore[union-attr]
        assert world.slot.previous.version == 2  # type: ignore[union-attr]
        assert world.loads.made[3].runtime.closed  # never served: closed, not leaked
        assert [r for r in world.recorder.recorded if r[2] == 3] == []
        assert world.loads.calls == [1, 2, 3]


async def test_a_removal_during_a_load_takes_effect_at_once() -> None:
    async with running() as world:
        await serving(world, 1)
        release = world.loads.hold(2)
        world.request(2)
        await until(lambda: world.slot.loading, "v2 loads")
        removal = world.request(0)
        await until(lambda: world.slot.removed, "removed")
        assert world.slot.current is None and world.slot.previous.version == 1  # type: ignore[union-attr]
        assert world.slot.handled_revision == removal
        release.set()
        await until(lambda: not world.slot.loading, "the v2 load ends")
        await polls()
        assert world.slot.current is None and world.slot.removed
        assert world.loads.made[2].runtime.closed


async def test_after_a_discarded_load_the_next_poll_loads_the_newest_request() -> None:
    async with running() as world:
        await serving(world, 1)
        release = world.loads.hold(2)
        world.request(2)
        await until(lambda: world.slot.loading, "v2 loads")
        newest = world.request(3)
        await polls()
        assert world.loads.calls == [1, 2]  # one load per alias at a time
        release.set()
        await until(lambda: world.slot.current.version == 3, "v3 serves")  # type: ignore[union-attr]
        assert world.slot.previous.version == 1  # type: ignore[union-attr]
        assert world.loads.made[2].runtime.closed
        assert world.loads.calls == [1, 2, 3]
        await until(lambda: (newest, "DeploymentActivated", 3) in world.recorder.recorded, "")


async def test_the_same_version_at_a_newer_revision_is_still_swapped_in() -> None:
    async with running() as world:
        await serving(world, 1)
        release = world.loads.hold(2)
        world.request(2, share=0.1)
        await until(lambda: world.slot.loading, "v2 loads")
        newer = world.request(2, share=0.3)  # a traffic share change while it loads
        await polls()
        release.set()
        await until(lambda: world.slot.current.version == 2, "v2 serves")  # type: ignore[union-attr]
        assert world.slot.handled_revision == newer and world.slot.traffic_share == 0.3
        assert world.loads.calls == [1, 2]
        await until(lambda: (newer, "DeploymentActivated", 2) in world.recorder.recorded, "")


@pytest.mark.parametrize(
    ("error", "stage"),
    [
        (LoadFailure("parity", "disagrees with ONNX Runtime"), "parity"),
        (ValueError("cannot reshape array of size 2 into shape (64,newaxis)"), "load"),
    ],
)
async def test_any_failure_to_load_is_one_recorded_refusal_never_a_reload_loop(
    error: Exception, stage: str
) -> None:
    async with running() as world:
        await serving(world, 1)
        world.loads.failures[2] = [error, error, error]
        revision = world.request(2)
        await until(lambda: world.slot.refused, "v2 refused")
        assert world.slot.failure.stage == stage  # type: ignore[union-attr]
        assert world.slot.current.version == 1  # type: ignore[union-attr]
        assert world.slot.handled_revision == revision
        await polls(20)
        assert world.loads.calls == [1, 2]
        assert world.recorder.recorded[-1] == (revision, "DeploymentFailed", 2)


async def test_a_refused_version_asked_for_again_is_loading_not_refused_until_it_fails() -> None:
    """GetDeployment, its metric and the SDK's wait read ``refused``: a version asked for
    again after a refusal (a transient cause, fixed) is loading, not refused by the old
    attempt."""
    async with running() as world:
        await serving(world, 1)
        world.loads.failures[2] = [LoadFailure("load", "unexpected MemoryError")]
        world.request(2)
        await until(lambda: world.slot.refused, "v2 refused")
        first = world.slot.failure
        await serving(world, 1)  # back to the version that serves
        release = world.loads.hold(2)
        world.loads.failures[2] = [LoadFailure("parity", "disagrees with ONNX Runtime")]
        again = world.request(2)
        await until(lambda: world.slot.loading, "v2 loads again")
        await polls()
        assert not world.slot.refused and world.slot.failure is None
        release.set()
        await until(lambda: world.slot.refused, "v2 refused again")
        assert world.slot.failure is not first and world.slot.failure.stage == "parity"  # type: ignore[union-attr]
        assert world.recorder.recorded[-1] == (again, "DeploymentFailed", 2)


async def test_a_registry_outage_is_retried_with_backoff_and_never_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loader_module, "RETRY_FIRST_S", 0.05)
    async with running() as world:
        world.loads.failures[1] = [Unavailable("the model registry answered UNAVAILABLE")] * 2
        world.request(1)
        await until(lambda: len(world.loads.calls) == 2, "a second try")
        started = time.monotonic()
        await until(lambda: world.slot.current is not None, "v1 serves")
        assert time.monotonic() - started >= 0.09  # the second wait is twice the first
        assert world.loads.calls == [1, 1, 1]
        assert world.slot.failure is None
        assert [r[1] for r in world.recorder.recorded] == ["DeploymentActivated"]


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        OSError("connection refused"),
    ],
)
async def test_an_outcome_that_could_not_be_recorded_is_retried_without_reloading(
    error: Exception,
) -> None:
    async with running() as world:
        await serving(world, 1)
        world.recorder.fail = [error, error]
        revision = world.request(2)
        await until(lambda: (revision, "DeploymentActivated", 2) in world.recorder.recorded, "")
        assert world.recorder.calls == 4  # v1's, then v2's twice refused and once recorded
        assert world.loads.calls == [1, 2]


async def test_an_unrecorded_outcome_the_alias_moved_past_is_dropped() -> None:
    async with running() as world:
        await serving(world, 1)
        world.recorder.fail = [OSError("connection refused")] * 1000
        world.request(2)
        await until(lambda: world.slot.current.version == 2, "v2 serves")  # type: ignore[union-attr]
        world.request(0)
        await until(lambda: world.slot.removed, "removed")
        world.recorder.fail = []
        await polls(10)
        assert [r for r in world.recorder.recorded if r[2] == 2] == []


async def test_stopping_with_a_load_in_flight_ends_cleanly() -> None:
    async with running() as world:
        await serving(world, 1)
        world.loads.hold(2)
        world.request(2)
        await until(lambda: world.slot.loading, "v2 loads")
    # ``running`` stopped the loader and awaited it: no "Set changed size during iteration".
    assert world.slot.current.version == 1  # type: ignore[union-attr]
