"""One health for a pod whose service runs as several processes sharing its port.

The processes of ``libs.runtime.processes`` listen on one port with SO_REUSEPORT, and the
kernel hands each new connection, so each Kubernetes probe, to one of them at random. With
a health service per process and nothing combining them, a probe saw one process's view:
readiness passed while a sibling was still loading (its share of calls got UNAVAILABLE),
and a wedged or not-live process failed only the probes that happened to reach it, so with
2 processes a liveness ``failureThreshold`` of 12 was practically never reached. A pod
serves with all its processes or not at all, so its health must say so on every
connection.

How: the first process creates a small file of fixed-size slots, one per process, and
passes its path to the others (``POD_HEALTH_FILE_ENV``). Every process maps it and, every
``BEAT_EVERY_S`` from a task on its event loop, writes its own slot: a heartbeat
(``time.monotonic()``: one clock for all processes of a Linux machine), its own readiness
(what ``GrpcServer.set_serving`` last said) and its own liveness (``set_live``). It then
reads every sibling's slot and gives the server their combined health
(``GrpcServer.set_siblings``), which publishes:
- readiness (``""`` and the service names): SERVING only while this process is ready and
  every sibling's slot says ready with a heartbeat younger than ``FRESH_WITHIN_S``;
- liveness (``lathe.liveness``): NOT_SERVING while any process says it is not live, or
  has not beaten for ``LIVE_GRACE_S`` (its event loop is wedged: a restart helps).
Per-part names (``<service>/<part>``) stay per process: each process loads its own parts,
and a client asking about one wants to know whether the process it talks to has it.

Writes to the map are plain stores of 16 bytes: a reader may catch a slot half-written and
see, for one round, a new heartbeat with the old flags. The next round (0.5 s) corrects it,
well within any probe's period, so there is no lock between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from libs.grpckit import GrpcServer

_log = logging.getLogger(__name__)

POD_HEALTH_FILE_ENV = "LATHE_POD_HEALTH_FILE"
"""Path of the pod's health file, set by the first process for the ones it starts. An
internal hand-over between the processes of one pod, not a setting, so it is not part of
``LatheSettings``."""
BEAT_EVERY_S = 0.5
"""How often each process writes its slot and reads its siblings'."""
FRESH_WITHIN_S = 3.0
"""A sibling whose heartbeat is older than this counts as not ready: six missed beats,
far beyond the event loop latency of a busy process, and within one readiness period."""
LIVE_GRACE_S = 15.0
"""A sibling whose heartbeat is older than this counts as not live (its event loop is
wedged). Kubernetes adds its own threshold on top (12 liveness periods), so a long stall
that recovers is not restarted, but a wedged process now fails every probe, not 1 in N."""

_SLOT = struct.Struct("<d??6x")
"""heartbeat (monotonic seconds; 0.0: not started yet), ready, live; 16 bytes."""


@dataclass(frozen=True)
class Slot:
    """What one process last wrote about itself."""

    heartbeat: float
    """``time.monotonic()`` at its last beat; 0.0 while it has not beaten yet (starting)."""
    ready: bool
    """Its own readiness, as its watchdog last set it (``GrpcServer.set_serving``)."""
    live: bool
    """Its own liveness: False when a restart would help (e.g. its relay is stuck)."""


STARTING = Slot(heartbeat=0.0, ready=False, live=True)
"""A slot no process has written yet: not ready, but not counted as wedged either; a
process that never gets going fails the pod's startup probe instead."""


@dataclass(frozen=True)
class SiblingHealth:
    """The other processes' combined health, as one process sees it."""

    not_ready_because: str | None
    """None when every sibling is ready with a fresh heartbeat, else which are not and why."""
    not_live_because: str | None
    """None when no sibling says it is not live or has stopped beating, else which and why."""


def sibling_health(
    slots: Sequence[Slot],
    own_index: int,
    now: float,
    *,
    fresh_within_s: float = FRESH_WITHIN_S,
    live_grace_s: float = LIVE_GRACE_S,
) -> SiblingHealth:
    """Combine every slot but ``own_index``'s (this process knows its own health first-hand)."""
    not_ready: list[str] = []
    not_live: list[str] = []
    for index, slot in enumerate(slots):
        if index == own_index:
            continue
        if slot.heartbeat == 0.0:
            not_ready.append(f"process {index} is starting")
            continue
        age_s = now - slot.heartbeat
        if age_s > live_grace_s:
            not_live.append(f"process {index} has not reported for {age_s:.0f} s (wedged?)")
        elif not slot.live:
            not_live.append(f"process {index} reports it is not live")
        if age_s > fresh_within_s:
            not_ready.append(f"process {index} has not reported for {age_s:.1f} s")
        elif not slot.ready:
            not_ready.append(f"process {index} is not ready")
    return SiblingHealth("; ".join(not_ready) or None, "; ".join(not_live) or None)


def create_pod_health_file(processes: int) -> Path:
    """A new file with ``processes`` slots, all ``STARTING``; the caller removes it."""
    fd, name = tempfile.mkstemp(prefix="lathe-pod-health-")
    with os.fdopen(fd, "wb") as file:
        file.write(_SLOT.pack(STARTING.heartbeat, STARTING.ready, STARTING.live) * processes)
    return Path(name)


class PodHealthFile:
    """The pod's health file, mapped into this process."""

    def __init__(self, path: Path) -> None:
        with path.open("r+b") as file:  # the map stays valid once the file is closed
            self._map = mmap.mmap(file.fileno(), 0)
        if len(self._map) == 0 or len(self._map) % _SLOT.size:
            raise ValueError(f"{path} is not a pod health file ({len(self._map)} bytes)")
        self.processes = len(self._map) // _SLOT.size

    def write(self, index: int, slot: Slot) -> None:
        _SLOT.pack_into(self._map, index * _SLOT.size, slot.heartbeat, slot.ready, slot.live)

    def read(self) -> list[Slot]:
        return [Slot(*_SLOT.unpack_from(self._map, i * _SLOT.size)) for i in range(self.processes)]

    def close(self) -> None:
        self._map.close()


class PodHealth:
    """Beats for this process and keeps its server's health pod-wide."""

    def __init__(
        self,
        *,
        name: str,
        file: PodHealthFile,
        index: int,
        server: GrpcServer,
        fresh_within_s: float = FRESH_WITHIN_S,
        live_grace_s: float = LIVE_GRACE_S,
    ) -> None:
        if not 0 <= index < file.processes:
            raise ValueError(f"process index {index} is not among {file.processes} slots")
        self._name = name
        self._file = file
        self._index = index
        self._server = server
        self._fresh_within_s = fresh_within_s
        self._live_grace_s = live_grace_s
        self._last = SiblingHealth(None, None)
        """As last given to the server (changes are logged once)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every ``BEAT_EVERY_S`` until ``stop``; then tell the siblings at once that
        this process no longer serves, so the whole pod turns NOT_SERVING with it."""
        try:
            while not stop.is_set():
                await self.beat()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), BEAT_EVERY_S)
        finally:
            self._file.write(
                self._index, Slot(time.monotonic(), ready=False, live=self._server.live)
            )

    async def beat(self) -> None:
        """Write this process's slot, then publish its siblings' combined health."""
        now = time.monotonic()
        self._file.write(self._index, Slot(now, self._server.ready, self._server.live))
        health = sibling_health(
            self._file.read(),
            self._index,
            now,
            fresh_within_s=self._fresh_within_s,
            live_grace_s=self._live_grace_s,
        )
        self._log_changes(health)
        self._last = health
        await self._server.set_siblings(
            ready=health.not_ready_because is None, live=health.not_live_because is None
        )

    def _log_changes(self, health: SiblingHealth) -> None:
        was, now = self._last, health
        if (was.not_ready_because is None) != (now.not_ready_because is None):
            if now.not_ready_because is None:
                _log.info("%s: every other process of the pod is ready", self._name)
            else:
                _log.info("%s: %s: pod NOT_SERVING", self._name, now.not_ready_because)
        if (was.not_live_because is None) != (now.not_live_because is None):
            if now.not_live_because is None:
                _log.warning("%s: every process of the pod is live again", self._name)
            else:
                _log.error(
                    "%s: %s: liveness NOT_SERVING, asking for a restart of the pod",
                    self._name,
                    now.not_live_because,
                )
