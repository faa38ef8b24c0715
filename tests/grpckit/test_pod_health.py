"""Processes sharing a port answer health probes with the pod's health, on every connection.

Each probe of Kubernetes opens a new connection, and the kernel hands it to any process
listening on the port (SO_REUSEPORT). Before ``libs.runtime.pod_health``, each process
answered with its own health: with one of two processes NOT_SERVING, about half the probes
still passed, and a wedged process failed only the probes that reached it. Here real
servers share a real port and a real health file, and each probe opens its own connection
(a local subchannel pool: grpc would otherwise reuse one connection for every channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.model_registry.v1 import service_pb2
from libs.grpckit import GrpcServer
from libs.grpckit.server import LIVENESS_SERVICE
from libs.runtime.pod_health import PodHealth, PodHealthFile, create_pod_health_file
from tests.support.subprocesses import sigkill, start_worker

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
READINESS = ("", REGISTRY.full_name)
PROBES = 20
_Status = health_pb2.HealthCheckResponse.ServingStatus


@dataclass
class _Process:
    """One process of the pod: its server and the task that beats for it."""

    server: GrpcServer
    stop: asyncio.Event
    beating: asyncio.Task[None]


@dataclass
class _Pod:
    port: int
    file: PodHealthFile
    first: _Process
    second: _Process


async def _start_process(
    name: str, address: str, file: PodHealthFile, index: int
) -> tuple[_Process, int]:
    server = GrpcServer(address=address, services=[REGISTRY], reuse_port=True)
    port = await server.start()
    # A part only this process has tells which process a connection reached.
    await server.set_parts({f"{REGISTRY.full_name}/{name}": True})
    stop = asyncio.Event()
    pod = PodHealth(name=name, file=file, index=index, server=server)
    return _Process(server, stop, asyncio.create_task(pod.run(stop))), port


@pytest_asyncio.fixture
async def pod() -> AsyncIterator[_Pod]:
    path = create_pod_health_file(2)
    file = PodHealthFile(path)
    first, port = await _start_process("first", "127.0.0.1:0", file, 0)
    second, _ = await _start_process("second", f"127.0.0.1:{port}", file, 1)
    try:
        yield _Pod(port, file, first, second)
    finally:
        for process in (first, second):
            process.stop.set()
            await process.beating
            await process.server.stop(0)
        path.unlink()


async def _probe(port: int, name: str) -> tuple[str, str]:
    """(the process that answered, the status of ``name``) over a new connection."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        first_part = health_pb2.HealthCheckRequest(service=f"{REGISTRY.full_name}/first")
        try:
            await health.Check(first_part, timeout=5)
            process = "first"
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            process = "second"
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
    return process, _Status.Name(reply.status)


async def _probes(port: int, name: str) -> tuple[set[str], set[str]]:
    """Which processes answered ``PROBES`` new connections, and which statuses they gave."""
    answers = await asyncio.gather(*(_probe(port, name) for _ in range(PROBES)))
    return {process for process, _ in answers}, {status for _, status in answers}


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _every_process_saw_every_other(file: PodHealthFile) -> None:
    """Two rounds of beats after now: in the second, every process read what every other
    wrote after the change, and published it."""
    for _ in range(2):
        since = time.monotonic()

        def beaten(since: float = since) -> bool:
            return all(slot.heartbeat > since for slot in file.read())

        await _until(beaten, "a round of beats")


async def test_one_process_not_ready_makes_every_connection_not_serving(pod: _Pod) -> None:
    await pod.first.server.set_serving(True)
    await pod.second.server.set_serving(True)
    await _every_process_saw_every_other(pod.file)
    for name in READINESS:
        assert await _probes(pod.port, name) == ({"first", "second"}, {"SERVING"})

    await pod.second.server.set_serving(False)  # e.g. still loading its models
    await _every_process_saw_every_other(pod.file)

    for name in READINESS:
        assert await _probes(pod.port, name) == ({"first", "second"}, {"NOT_SERVING"})
    assert await _probes(pod.port, LIVENESS_SERVICE) == ({"first", "second"}, {"SERVING"})
    # Parts stay per process: the first still serves its own; the second has none of it.
    first_part = f"{REGISTRY.full_name}/first"
    parts = await asyncio.gather(*(_status_or_failure(pod.port, first_part) for _ in range(PROBES)))
    assert set(parts) == {"SERVING", "NOT_FOUND"}, parts

    await pod.second.server.set_serving(True)
    await _every_process_saw_every_other(pod.file)
    for name in READINESS:
        assert await _probes(pod.port, name) == ({"first", "second"}, {"SERVING"})


async def test_one_process_not_live_makes_every_connection_not_live(pod: _Pod) -> None:
    await pod.first.server.set_serving(True)
    await pod.second.server.set_serving(True)
    await pod.second.server.set_live(False)  # e.g. its relay is stuck: a restart helps
    await _every_process_saw_every_other(pod.file)

    assert await _probes(pod.port, LIVENESS_SERVICE) == ({"first", "second"}, {"NOT_SERVING"})
    assert await _probes(pod.port, "") == ({"first", "second"}, {"SERVING"})


async def test_a_stopping_process_takes_the_pod_out_of_readiness_at_once(pod: _Pod) -> None:
    await pod.first.server.set_serving(True)
    await pod.second.server.set_serving(True)
    await _every_process_saw_every_other(pod.file)

    pod.second.stop.set()  # as the host does at SIGTERM: its last beat says not ready
    await pod.second.beating
    await pod.second.server.stop(0)
    since = time.monotonic()
    await _until(lambda: pod.file.read()[0].heartbeat > since, "the first process to beat")

    assert await _probes(pod.port, "") == ({"first"}, {"NOT_SERVING"})


async def _status_or_failure(port: int, name: str) -> str:
    """A probe as the kubelet makes it: a new connection, a 1 s timeout."""
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=1
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
    return _Status.Name(reply.status)


async def test_a_wedged_process_makes_every_answer_not_live(tmp_path: Path) -> None:
    path = create_pod_health_file(2)
    file = PodHealthFile(path)
    server = GrpcServer(address="127.0.0.1:0", services=[REGISTRY], reuse_port=True)
    port = await server.start()
    await server.set_serving(True)
    stop = asyncio.Event()
    pod = PodHealth(
        name="first", file=file, index=0, server=server, fresh_within_s=1.0, live_grace_s=2.0
    )
    beating = asyncio.create_task(pod.run(stop))
    worker = await start_worker(
        "tests.grpckit.pod_health_worker",
        *("--port", str(port), "--file", str(path)),
        log_path=tmp_path / "worker.log",
    )
    try:
        await _until(lambda: file.read()[1].ready, "the second process to be ready", 60)
        await _every_process_saw_every_other(file)
        before = await asyncio.gather(
            *(_status_or_failure(port, LIVENESS_SERVICE) for _ in range(PROBES))
        )
        assert set(before) == {"SERVING"}, before

        worker.send_signal(signal.SIGUSR1)  # its event loop blocks: it stops beating
        await asyncio.sleep(2.0 + 1.0)  # past the liveness grace, and one more beat

        after = await asyncio.gather(
            *(_status_or_failure(port, name) for name in (LIVENESS_SERVICE, "") * PROBES)
        )
        # The first process answers NOT_SERVING for liveness and readiness alike; the
        # wedged one does not answer at all. No probe passes, so the kubelet restarts it.
        assert "NOT_SERVING" in after, after
        assert "SERVING" not in after, after
    finally:
        await sigkill(worker)
        stop.set()
        await beating
        await server.stop(0)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
