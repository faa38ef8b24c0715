"""One service as several processes in a pod, sharing its port.

Python's per-request work runs on one core per process, so a service meant to use N
cores runs N processes listening on one address with SO_REUSEPORT (the kernel spreads
connections over them), each a full replica of the service. The first (process index 0)
starts the others and:
- gives each a loopback metrics port of its own and serves them all on the pod's metrics
  port, every sample labelled with its ``process`` (``libs.telemetry.pod_metrics``): two
  processes binding the pod's port would fail, and Prometheus scrapes one port a pod;
- watches them: when one ends while the pod is not stopping, the first stops too, and
  exits non-zero when that one failed, so the orchestrator restarts the pod and its
  restart alert sees it. A pod serves with all its processes or not at all, never
  silently on fewer cores;
- creates the pod's health file (``libs.runtime.pod_health``) that every process writes
  its own health to and reads its siblings' from, so that each answers a probe with the
  pod's health, not its own: the kernel hands each probe's connection to any of them;
- passes its stop signal on as it arrives, so all drain side by side, and waits for them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from libs.config import LatheSettings
from libs.runtime.host import run_service
from libs.runtime.pod_health import POD_HEALTH_FILE_ENV, create_pod_health_file
from libs.runtime.spec import ServiceSpec

_log = logging.getLogger(__name__)
_WATCH_EVERY_S = 0.5
_STOP_WAIT_S = 30.0


def run_service_processes(spec: ServiceSpec, *, processes: int, module: str) -> None:
    """Run ``spec`` as ``processes`` processes (``python -m module`` starts each)."""
    settings = LatheSettings()
    spec = dataclasses.replace(spec, reuse_port=processes > 1)
    if processes <= 1:
        run_service(spec)
        return
    if settings.process_index > 0:
        # Read here, not in LatheSettings: a hand-over from the first process, not a setting.
        handed_over = os.environ.get(POD_HEALTH_FILE_ENV)
        if handed_over is None:
            raise SystemExit(
                f"LATHE_PROCESS_INDEX={settings.process_index} without {POD_HEALTH_FILE_ENV}: "
                "the first process of a pod sets both for the ones it starts; start the pod "
                "without LATHE_PROCESS_INDEX"
            )
        run_service(spec, pod_health_file=Path(handed_over))
        return
    health_file = create_pod_health_file(processes)
    metrics_ports = (
        {i: _free_loopback_port() for i in range(1, processes)}
        if settings.metrics_port is not None
        else {}
    )
    children = {
        i: subprocess.Popen(
            [sys.executable, "-m", module], env=_child_env(i, metrics_ports.get(i), health_file)
        )
        for i in range(1, processes)
    }
    watch = _ChildWatch(children)
    watch.start()

    def stop_together() -> None:
        """The pod's stop signal reaches every process at once: they drain side by side."""
        watch.stopping.set()
        _signal(children)

    try:
        run_service(
            spec,
            sibling_metrics={
                str(i): f"http://127.0.0.1:{port}/metrics" for i, port in metrics_ports.items()
            },
            on_stop=stop_together,
            pod_health_file=health_file,
        )
    finally:
        watch.stopping.set()
        _stop(children)
        health_file.unlink(missing_ok=True)
    if watch.ended is not None and watch.ended[1] != 0:
        index, code = watch.ended
        raise SystemExit(
            f"{spec.name.display_name}: process {index} of {processes} ended with exit code "
            f"{code}, so the whole pod stopped (see that process's log above); it serves "
            "with all its processes or not at all"
        )


def _child_env(index: int, metrics_port: int | None, health_file: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "LATHE_PROCESS_INDEX": str(index),
        POD_HEALTH_FILE_ENV: str(health_file),
    }
    if metrics_port is not None:
        env["LATHE_METRICS_PORT"] = str(metrics_port)
        env["LATHE_METRICS_HOST"] = "127.0.0.1"
    return env


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _ChildWatch(threading.Thread):
    """Stops this process (SIGTERM to itself: the host's graceful stop) when a child ends
    while the pod is not stopping."""

    def __init__(self, children: Mapping[int, subprocess.Popen[bytes]]) -> None:
        super().__init__(name="child-watch", daemon=True)
        self._children = children
        self.stopping = threading.Event()
        self.ended: tuple[int, int] | None = None
        """(process index, exit code) of the child that ended unasked."""

    def run(self) -> None:
        while not self.stopping.wait(_WATCH_EVERY_S):
            for index, child in self._children.items():
                code = child.poll()
                if code is not None and not self.stopping.is_set():
                    # 0: it was stopped gracefully (e.g. Ctrl-C reached the whole group).
                    self.ended = (index, code)
                    (_log.info if code == 0 else _log.error)(
                        "process %d (pid %d) ended with exit code %d; stopping the pod",
                        index,
                        child.pid,
                        code,
                    )
                    os.kill(os.getpid(), signal.SIGTERM)
                    return


def _signal(children: Mapping[int, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)


def _stop(children: Mapping[int, subprocess.Popen[bytes]]) -> None:
    _signal(children)
    deadline = time.monotonic() + _STOP_WAIT_S
    for child in children.values():
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.error("process pid %d did not stop within %.0f s; killed", child.pid, _STOP_WAIT_S)
            child.kill()
            child.wait()
