"""Each process loads what the deployments say, and reports how it went.

Every ``poll_interval_s`` the loader reads the deployments read model; a deployment whose
request revision this process has not acted on yet is handled in the background: a
removal empties the slot (keeping the version as the rollback candidate), a version
already loaded (current or previous) is swapped in at once, anything else is loaded
(app/loading.py) and swapped in only once warm and checked. A refused version leaves
the slot as it was and its failure recorded; a registry outage is retried with backoff
and recorded as nothing. The first process to finish records the outcome event; the
others find it recorded (``decide_outcome``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg

from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m
from libs.errors import Unavailable
from libs.eventstore import EventMetadata
from services.inference.app.deployments import DeploymentRecorder
from services.inference.app.loading import LoadFailure, load_version
from services.inference.app.model import LoadedModel
from services.inference.app.serving import Activation, ServingTable, Slot
from services.inference.batching import Batcher
from services.inference.domain.deployment import Deployment, Failure
from services.inference.domain.parity import ParityResult
from services.inference.runtimes.base import ONNXRUNTIME_CPU
from services.inference.runtimes.build import BuildOptions, EngineCache, RuntimeSettings
from services.inference.runtimes.probe import Capabilities, no_nvidia_device, probe_gpu
from services.inference.store import deployments as table
from services.inference.store.registry import RegistryGateway

_log = logging.getLogger(__name__)
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


class DeploymentLoader:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        table_: ServingTable,
        recorder: DeploymentRecorder,
        registry: RegistryGateway,
        batcher: Batcher,
        follows: Callable[[str, str], bool],
        preference: tuple[str, ...],
        runtime: RuntimeSettings,
        poll_interval_s: float,
        gpu_probe: bool = True,
        engine_cache: Callable[[asyncio.AbstractEventLoop], EngineCache] | None = None,
    ) -> None:
        self._pool = pool
        self._table = table_
        self._recorder = recorder
        self._registry = registry
        self._batcher = batcher
        self._follows = follows
        self._preference = preference
        self._runtime = runtime
        self._options: BuildOptions | None = None
        """Set by ``run`` once the GPU probe has answered, before any load."""
        self._engines: EngineCache | None = None
        self._poll_s = poll_interval_s
        self._gpu_probe = gpu_probe
        self._engine_cache = engine_cache
        self._busy: set[tuple[str, str]] = set()
        self._one_load_at_a_time = asyncio.Semaphore(1)
        self._retry_after: dict[tuple[str, str], float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        tasks: set[asyncio.Task[None]] = set()
        caps = await self._capabilities()
        self._options = self._runtime.with_caps(caps)
        if caps.cuda and self._engine_cache is not None:
            self._engines = self._engine_cache(asyncio.get_running_loop())
        while not stop.is_set():
            try:
                for state in await table.all_deployments(self._pool):
                    if self._follows(state.model_name, state.alias):
                        self._consider(state, tasks)
            except (asyncpg.PostgresError, OSError) as exc:
                _log.warning("could not read deployments (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_s)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

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

    def _consider(self, state: Deployment, tasks: set[asyncio.Task[None]]) -> None:
        key = (state.model_name, state.alias)
        slot = self._table.ensure(*key)
        if state.request_revision == slot.handled_revision or key in self._busy:
            return
        loop = asyncio.get_running_loop()
        if self._retry_after.get(key, 0.0) > loop.time():
            return
        self._busy.add(key)
        task = asyncio.create_task(self._apply(slot, state))
        tasks.add(task)
        task.add_done_callback(lambda t: (tasks.discard(t), self._busy.discard(key)))

    async def _apply(self, slot: Slot, state: Deployment) -> None:
        key = (slot.model_name, slot.alias)
        slot.requested_version = state.requested_version
        if state.removed:
            if slot.current is not None:
                slot.previous = slot.current
            slot.current = None
            slot.removed = True
            slot.handled_revision = state.request_revision
            _log.info("%s/%s removed", *key)
            return
        slot.removed = False
        version = state.requested_version
        if slot.current is not None and slot.current.version == version:
            slot.traffic_share = state.traffic_share
            slot.handled_revision = state.request_revision
            await self._report_activation(slot, state, slot.current, reused=True)
            return
        if slot.previous is not None and slot.previous.version == version:
            self._swap(slot, slot.previous, state, None, 0.0)
            _log.info("%s/%s rolled back to v%d (kept loaded)", *key, version)
            await self._report_activation(slot, state, slot.current, reused=True)  # type: ignore[arg-type]
            return
        assert self._options is not None, "run() probes the GPU before it schedules a load"
        slot.loading = True
        try:
            async with self._one_load_at_a_time:
                loaded = await load_version(
                    self._registry,
                    slot.model_name,
                    version,
                    preference=self._preference,
                    options=self._options,
                    engines=self._engines,
                )
        except LoadFailure as failure:
            slot.failure = Failure(version, failure.stage, failure.reason, datetime.now(UTC))
            slot.handled_revision = state.request_revision
            _log.warning(
                "%s/%s v%d refused at %s: %s", *key, version, failure.stage, failure.reason
            )
            await self._recorder.record_outcome(
                slot.model_name,
                slot.alias,
                state.request_revision,
                ev.DeploymentFailed(
                    model_name=slot.model_name,
                    alias=slot.alias,
                    version=version,
                    stage=failure.stage,
                    reason=failure.reason,
                    serving_version=slot.current.version if slot.current else 0,
                    replica=REPLICA,
                ),
                EventMetadata(actor="inference"),
            )
            return
        except (Unavailable, OSError) as exc:
            self._retry_after[key] = asyncio.get_running_loop().time() + 2.0
            _log.warning("%s/%s v%d: registry unavailable (%s); retrying", *key, version, exc)
            return
        finally:
            slot.loading = False
        self._swap(slot, loaded.model, state, loaded.parity, loaded.seconds)
        _log.info("%s/%s now serves v%d on %s", *key, version, loaded.model.runtime.info.name)
        await self._report_activation(slot, state, loaded.model, reused=False)

    def _swap(
        self,
        slot: Slot,
        model: LoadedModel,
        state: Deployment,
        parity: ParityResult | None,
        seconds: float,
    ) -> None:
        displaced = slot.previous if slot.previous is not model else None
        slot.previous = slot.current
        slot.current = model  # the atomic swap: Predict reads this reference once
        slot.traffic_share = state.traffic_share
        slot.failure = None
        slot.handled_revision = state.request_revision
        if parity is not None or slot.activation is None:
            slot.activation = Activation(datetime.now(UTC), parity, seconds)
        else:
            slot.activation = Activation(datetime.now(UTC), slot.activation.parity, 0.0)
        if displaced is not None:
            self._batcher.forget(displaced)

    async def _report_activation(
        self, slot: Slot, state: Deployment, model: LoadedModel, *, reused: bool
    ) -> None:
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
        await self._recorder.record_outcome(
            slot.model_name,
            slot.alias,
            state.request_revision,
            ev.DeploymentActivated(
                model_name=slot.model_name,
                alias=slot.alias,
                version=model.version,
                previous_version=slot.previous.version if slot.previous else 0,
                runtime=info.kind,
                runtime_details=details,
                replica=REPLICA,
            ),
            EventMetadata(actor="inference"),
        )
