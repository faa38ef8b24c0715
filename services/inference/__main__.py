"""``python -m services.inference``: run the inference service (N processes, one port).

With ``LATHE_INFERENCE_PROCESSES=n`` (n > 1) this process starts n - 1 more, and all n
listen on the same address with SO_REUSEPORT, so the kernel spreads connections over
them and Python's per-request work uses n cores. Each process is a full replica: it
loads every deployment itself and serves it; the durable consumer and the relay share
their work among them as among any replicas.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from libs.runtime import run_service
from services.inference.config import InferenceSettings
from services.inference.service import SPEC

_CHILD = "LATHE_INFERENCE_CHILD"


def _share_the_port() -> None:
    """Listen with SO_REUSEPORT.

    Workaround until ``libs.grpckit.GrpcServer`` takes a ``reuse_port`` argument (it
    pins ``grpc.so_reuseport`` to 0, so a second process could not bind): only in this
    process, gRPC servers are created with the option set to 1.
    """
    import grpc

    create = grpc.aio.server

    def server(*args, options=(), **kwargs):  # type: ignore[no-untyped-def]
        shared = [(k, 1 if k == "grpc.so_reuseport" else v) for k, v in options or ()]
        return create(*args, options=shared, **kwargs)

    grpc.aio.server = server


def main() -> None:
    processes = InferenceSettings().processes
    children: list[subprocess.Popen[bytes]] = []
    if processes > 1:
        _share_the_port()
        if not os.environ.get(_CHILD):
            env = {**os.environ, _CHILD: "1"}
            children = [
                subprocess.Popen([sys.executable, "-m", "services.inference"], env=env)
                for _ in range(processes - 1)
            ]
    try:
        run_service(SPEC)  # returns on SIGTERM/SIGINT; the children are told next
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=30)


if __name__ == "__main__":
    main()
