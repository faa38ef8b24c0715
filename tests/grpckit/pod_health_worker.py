"""Process 1 of a two-process pod, for ``tests/grpckit/test_pod_health.py``: a real server
on the shared port (SO_REUSEPORT), ready and beating into the pod's health file. SIGUSR1
wedges its event loop (a blocking call on it, as a stuck process would make); SIGTERM
stops it."""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path

from lathe.model_registry.v1 import service_pb2
from libs.grpckit import GrpcServer
from libs.runtime.pod_health import PodHealth, PodHealthFile

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]


async def main(args: argparse.Namespace) -> None:
    server = GrpcServer(address=f"127.0.0.1:{args.port}", services=[REGISTRY], reuse_port=True)
    await server.start()
    await server.set_serving(True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, time.sleep, 3600)
    pod = PodHealth(name="worker", file=PodHealthFile(Path(args.file)), index=1, server=server)
    await pod.run(stop)
    await server.stop(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", required=True)
    asyncio.run(main(parser.parse_args()))
