"""Each process loads what the deployments say, and reports how it went.

Every ``poll_interval_s`` the loader reads the deployments read model and acts on each
deployment whose request revision this process has not handled yet:

- what needs no load takes effect at once, even while a load runs for the alias: a
  removal empties the slot (keeping the version as the rollback candidate), a version
  already loaded here (current or previous) is swapped in;
- anything else is loaded in the background (app/loading.py), one load per alias, and
  swapped in only once warm and checked, and only if the alias still asks for it when
  the load ends (a newer revision of the same version, a traffic share change, still
  counts). A load the alias moved away from meanwhile is discarded; the next poll
  handles the newest request.

A refused version (any failure of loading it that is not a registry outage) leaves the
slot as it was and its failure recorded; a registry outage is retried with backoff and
recorded as nothing. The first process to finish records the outcome event; the others
find it recorded (``decide_outcome``). An outcome that could not be recorded (Postgres
away) is retried on later polls until it is, without loading anything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m
from libs.errors import Unavailable
from services.inference.app.deployments import DeploymentRecorder
from services.inference.app.loading import Loaded, LoadFailure, load_version
from services.inference.app.model import LoadedModel
from services.inference.app.outcomes import Key, PendingOutcomes
from services.inference.app.serving import Activation, ServingTable, Slot
from services.inference.domain.deployment import Deployment, Failure
from services.inference.domain.parity import ParityResult
from services.inference.runtimes.base import ONNXRUNTIME_CPU
from services.inference.runtimes.build import BuildOptions, EngineCache, RuntimeSettings
from services.inference.runtimes.probe import Capabilities, no_nvidia_device, probe_gpu
from services.inference.store import deployments as table
from services.inference.store.registry import RegistryGateway

_log = logging.getLogger(__name__)
REPLICA = f"{socket.gethostname()}:{os.getpid()}"
RETRY_FIRST_S = 2.0
"""First wait before loading a version again after a registry outage; doubles per outage."""
RETRY_MAX_S = 30.0


LoadVersion = Callable[..., Awaitable[Loaded]]
"""``loading.load_version`` (tests pass a fake)."""
ReadDeployments = Callable[[asyncpg.Pool], Awaitable[list[Deployment]]]


@dataclass(frozen=True)
class _Backoff:
    """When loading ``version`` may be tried again after a registry outage."""

    version: int
    retry_at: float
    """Event-loop time."""
    delay_s: float


class DeploymentLoader:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        table_: ServingTable,
        recorder: DeploymentRecorder,
        registry: RegistryGateway,
        follows: Callable[[str, str], bool],
        preference: tuple[str, ...],
        runtime: RuntimeSettings,
        poll_interval_s: float,
        gpu_probe: bool = True,
        engine_cache: Callable[[asyncio.AbstractEventLoop], EngineCache] | None = None,
        load: LoadVersion = load_version,
        read_deployments: ReadDeployments = table.all_deployments,
    ) -> None:
        self._pool = pool
        self._table = table_
        self._recorder = recorder
        self._registry = registry
        self._follows = follows
        self._preference = preference
        self._runtime = runtime
        self._options: BuildOptions | None = None
        """Set by ``run`` once the GPU probe has answered, before any load."""
        self._engines: EngineCache | None = None
        self._poll_s = poll_interval_s
        self._gpu_probe = gpu_probe
        self._engine_cache = engine_cache
        self._load_version = load
        self._read_deployments = read_deployments
        self._one_load_at_a_time = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._latest: dict[Key, Deployment] = {}
        """Each alias's deployment as last read: what a finished load is checked against."""
        self._backoff: dict[Key, _Backoff] = {}
        self._outcomes = PendingOutcomes(recorder)

    async def run(self, stop: asyncio.Event) -> None:
        caps = await self._capabilities()
        self._options = self._runtime.with_caps(caps)
        if caps.cuda and self._engine_cache is not None:
            self._engines = self._engine_cache(asyncio.get_running_loop())
        try:
            while not stop.is_set():
                await self._poll()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_s)
        finally:
            await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        """Cancel the loads and recordings in flight. A build already running in a thread
        (an ONNX Runtime session, a TensorRT or AOTInductor compile) cannot be interrupted
        — Python threads cannot be cancelled — so it runs to its end unobserved, and the
        event loop's default executor waits for it when the loop closes."""
        pending = list(self._tasks)  # a copy: done-callbacks remove tasks as they end
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _capabilities(self) -> Capabilities:
        if not self._gpu_probe:
            return Capabilities(reason="the GPU probe is off (LATHE_INFERENCE_GPU_PROBE=false)")
        if self._preference[:1] == (ONNXRUNTIME_CPU,):
            return Capabilities(reason="onnxruntime_cpu is preferred")
        absent = no_nvidia_device()
        if absent:
            return Capabilities(reason=absent)
        caps = await asyncio.to_thread(probe_gpu)
        _log.info("GPU probe: %s", caps)
        return caps

    async def _poll(self) -> None:
        try:
            states = await self._read_deployments(self._pool)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            _log.warning("could not read deployments (%s); retrying", exc)
            return
        for state in states:
            if self._follows(state.model_name, state.alias):
                self._consider(state)
        self._table.deployments_read = True  # the slots to warm exist now

    def _consider(self, state: Deployment) -> None:
        key = (state.model_name, state.alias)
        slot = self._table.ensure(*key)
        self._latest[key] = state
        slot.requested_version = state.requested_version
        if state.request_revision != slot.handled_revision:
            self._handle(slot, state)
        if self._outcomes.due(key, state.request_revision):
            self._spawn(self._outcomes.record(key))

    def _handle(self, slot: Slot, state: Deployment) -> None:
        key = (slot.model_name, slot.alias)
        if state.removed:
            self._remove(slot, state)
            return
        slot.removed = False
        if slot.refused:  # asked for again: this request's load decides, not the last one's
            slot.failure = None
        if self._kept(slot, state.requested_version):
            self._activate_kept(slot, state)
        elif not slot.loading and not self._backing_off(key, state.requested_version):
            slot.loading = True  # one load per alias at a time; ``_load`` ends it
            self._spawn(self._load(slot, state.requested_version))
        # else: a load runs for this alias; when it ends it is checked against the newest
        # request, and a poll after it handles whatever that load does not answer.

    def _remove(self, slot: Slot, state: Deployment) -> None:
        if slot.current is not None:
            slot.previous = slot.current
        slot.current = None
        slot.removed = True
        slot.handled_revision = state.request_revision
        _log.info("%s/%s removed", slot.model_name, slot.alias)

    @staticmethod
    def _kept(slot: Slot, version: int) -> bool:
        """Whether ``version`` is loaded here already (serving, or kept for rollback)."""
        return any(m is not None and m.version == version for m in (slot.current, slot.previous))

    def _activate_kept(self, slot: Slot, state: Deployment) -> None:
        """Serve a version already loaded here (a share change, or a rollback) at once."""
        if slot.current is not None and slot.current.version == state.requested_version:
            slot.traffic_share = state.traffic_share
            slot.handled_revision = state.request_revision
        else:
            assert slot.previous is not None
            self._swap(slot, slot.previous, state, None, 0.0)
            _log.info(
                "%s/%s rolled back to v%d (kept loaded)",
                slot.model_name,
                slot.alias,
                state.requested_version,
            )
        self._decided(slot, state, self._activated(slot, reused=True))

    async def _load(self, slot: Slot, version: int) -> None:
        try:
            await self._load_and_apply(slot, version)
        finally:
            slot.loading = False
        await self._outcomes.record((slot.model_name, slot.alias))

    async def _load_and_apply(self, slot: Slot, version: int) -> None:
        key = (slot.model_name, slot.alias)
        assert self._options is not None, "run() probes the GPU before it schedules a load"
        try:
            async with self._one_load_at_a_time:
                if not _wants(self._latest[key], version):
                    return  # the alias moved while this waited its turn
                loaded = await self._load_version(
                    self._registry,
                    slot.model_name,
                    version,
                    preference=self._preference,
                    options=self._options,
                    engines=self._engines,
                )
        except (Unavailable, OSError) as exc:
            delay = self._back_off(key, version)
            _log.warning(
                "%s/%s v%d: registry unavailable (%s); retrying in %.0fs", *key, version, exc, delay
            )
            return
        except LoadFailure as failure:
            self._refuse(slot, version, failure.stage, failure.reason)
            return
        except Exception as exc:  # nothing mapped it to a stage: still the version's refusal,
            # or it would be downloaded again every poll and never reported
            _log.exception("%s/%s v%d: loading failed unexpectedly", *key, version)
            self._refuse(slot, version, "load", f"unexpected {type(exc).__name__}: {exc}")
            return
        self._install(slot, loaded)

    def _install(self, slot: Slot, loaded: Loaded) -> None:
        key = (slot.model_name, slot.alias)
        self._backoff.pop(key, None)
        state, model = self._latest[key], loaded.model
        if not _wants(state, model.version):
            model.runtime.close()  # never served: nothing else holds it
            _log.info(
                "%s/%s v%d loaded after the alias moved on (%s): discarded",
                *key,
                model.version,
                "removed" if state.removed else f"to v{state.requested_version}",
            )
            return
        self._swap(slot, model, state, loaded.parity, loaded.seconds)
        _log.info("%s/%s now serves v%d on %s", *key, model.version, model.runtime.info.name)
        self._decided(slot, state, self._activated(slot, reused=False))

    def _refuse(self, slot: Slot, version: int, stage: str, reason: str) -> None:
        key = (slot.model_name, slot.alias)
        self._backoff.pop(key, None)
        state = self._latest[key]
        if not _wants(state, version):
            _log.info("%s/%s v%d refused at %s after the alias moved on", *key, version, stage)
            return
        slot.failure = Failure(version, stage, reason, datetime.now(UTC))
        slot.handled_revision = state.request_revision
        _log.warning("%s/%s v%d refused at %s: %s", *key, version, stage, reason)
        failed = ev.DeploymentFailed(
            model_name=slot.model_name,
            alias=slot.alias,
            version=version,
            stage=stage,
            reason=reason,
            serving_version=slot.current.version if slot.current else 0,
            replica=REPLICA,
        )
        self._decided(slot, state, failed)

    def _back_off(self, key: Key, version: int) -> float:
        """Wait before loading ``version`` again: doubling while the outage lasts."""
        last = self._backoff.get(key)
        delay = RETRY_FIRST_S
        if last is not None and last.version == version:
            delay = min(last.delay_s * 2, RETRY_MAX_S)
        retry_at = asyncio.get_running_loop().time() + delay
        self._backoff[key] = _Backoff(version, retry_at, delay)
        return delay

    def _backing_off(self, key: Key, version: int) -> bool:
        """A request for another version is not held back by this one's outage."""
        last = self._backoff.get(key)
        if last is None or last.version != version:
            return False
        return last.retry_at > asyncio.get_running_loop().time()

    def _swap(
        self,
        slot: Slot,
        model: LoadedModel,
        state: Deployment,
        parity: ParityResult | None,
        seconds: float,
    ) -> None:
        slot.previous = slot.current
        slot.current = model  # the atomic swap: Predict reads this reference once
        slot.traffic_share = state.traffic_share
        slot.failure = None
        slot.handled_revision = state.request_revision
        if parity is not None or slot.activation is None:
            slot.activation = Activation(datetime.now(UTC), parity, seconds)
        else:
            slot.activation = Activation(datetime.now(UTC), slot.activation.parity, 0.0)

    def _activated(self, slot: Slot, *, reused: bool) -> ev.DeploymentActivated:
        model = slot.current
        assert model is not None
        info = model.runtime.info
        activation = slot.activation
        details = m.RuntimeDetails(
            precision=info.precision,
            threads=info.threads,
            engine_key=info.engine_key,
            selection_reason=info.selection_reason,
            load_seconds=0.0 if reused or activation is None else activation.load_seconds,
        )
        if activation is not None and activation.parity is not None:
            details.parity_max_abs_diff = activation.parity.max_abs_diff
            details.parity_tolerance = activation.parity.tolerance
        return ev.DeploymentActivated(
            model_name=slot.model_name,
            alias=slot.alias,
            version=model.version,
            previous_version=slot.previous.version if slot.previous else 0,
            runtime=info.kind,
            runtime_details=details,
            replica=REPLICA,
        )

    def _decided(
        self, slot: Slot, state: Deployment, event: ev.DeploymentActivated | ev.DeploymentFailed
    ) -> None:
        self._outcomes.decided((slot.model_name, slot.alias), state.request_revision, event)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("a deployment task failed", exc_info=task.exception())


def _wants(state: Deployment, version: int) -> bool:
    """Whether the deployment still asks for ``version``."""
    return not state.removed and state.requested_version == version
