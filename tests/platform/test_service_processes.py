"""A service run as several processes in one pod (``libs.runtime.processes``), as
Kubernetes runs it: the inference service with ``LATHE_INFERENCE_PROCESSES=2`` and a
metrics port, real processes on real Postgres and NATS.

- every process keeps running and the pod's metrics port serves them all, each sample
  labelled with its process (before, the second process died at start trying to bind the
  same metrics port, and the first served on alone);
- a process killed with SIGKILL stops the whole pod with a non-zero exit naming it, so
  the orchestrator restarts it instead of it serving on silently with fewer cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.platform.health import health_status
from tests.conftest import free_port
from tests.support.infra import InfraEndpoints
from tests.support.subprocesses import sigkill, sigterm, start_worker

pytestmark = pytest.mark.slow


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == pid:
            children.append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


@asynccontextmanager
async def _pod(
    infra: InfraEndpoints, database_url: str, home: Path, metrics_port: int
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    address = f"127.0.0.1:{free_port()}"
    env = {
        "LATHE_DATABASE_URL": database_url,
        "LATHE_NATS_URL": infra.nats_url,
        "LATHE_NAMESPACE": f"{infra.namespace}p{uuid.uuid4().hex[:6]}",
        "LATHE_HOME": str(home),
        "LATHE_INFERENCE_ADDR": address,
        "LATHE_MODEL_REGISTRY_ADDR": f"127.0.0.1:{free_port()}",
        "LATHE_FEATURE_STORE_ADDR": f"127.0.0.1:{free_port()}",
        "LATHE_METRICS_PORT": str(metrics_port),
        "LATHE_INFERENCE_PROCESSES": "2",
        "LATHE_SHUTDOWN_GRACE_S": "1",
    }
    pod = await start_worker("services.inference", log_path=home / "pod.log", env=env)
    try:
        yield pod, address
    finally:
        children = _children_of(pod.pid)  # once the pod is gone they belong to init
        await sigkill(pod)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, 9)


async def _until(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_both_processes_run_and_the_pod_serves_their_metrics_as_one(
    infra: InfraEndpoints, fresh_database_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    async with _pod(infra, fresh_database_url, tmp_path, metrics_port) as (pod, address):
        for _ in range(300):
            if await health_status(address) == "SERVING":
                break
            await asyncio.sleep(0.1)
        await _until(lambda: len(_children_of(pod.pid)) == 1, 10, "the second process")
        (child,) = _children_of(pod.pid)
        await asyncio.sleep(3)  # past the start-up in which the second process used to die

        assert _alive(child), (tmp_path / "pod.log").read_text()[-3000:]
        text = _metrics(metrics_port)
        type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(type_lines) == len(set(type_lines))
        for name in ("process_cpu_seconds_total", "lathe_inference_batches_total"):
            processes = {
                s.labels["process"]
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == name
            }
            assert processes == {"0", "1"}, name
        up = {
            s.labels["process"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "lathe_process_metrics_up"
        }
        assert up == {"0": 1.0, "1": 1.0}

        assert await sigterm(pod, timeout_s=30) == 0
        await _until(lambda: not _alive(child), 10, "the second process to stop with the pod")


async def test_a_killed_process_stops_the_pod_with_a_nonzero_exit(
    infra: InfraEndpoints, fresh_database_url: str, tmp_path: Path
) -> None:
    async with _pod(infra, fresh_database_url, tmp_path, free_port()) as (pod, _):
        await _until(lambda: len(_children_of(pod.pid)) == 1, 10, "the second process")
        (child,) = _children_of(pod.pid)
        await asyncio.sleep(2)
        assert pod.returncode is None

        os.kill(child, 9)
        code = await asyncio.wait_for(pod.wait(), 30)

        assert code == 1
        log = (tmp_path / "pod.log").read_text()
        assert "process 1 of 2 ended with exit code -9" in log
