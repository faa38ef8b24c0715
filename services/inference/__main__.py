"""``python -m services.inference``: run the inference service (N processes, one port).

With ``LATHE_INFERENCE_PROCESSES=n`` (n > 1) this process starts n - 1 more, and all n
listen on the same address with SO_REUSEPORT, so the kernel spreads connections over
them and Python's per-request work uses n cores. Each process is a full replica: it
loads every deployment itself and serves it; the durable consumer and the relay share
their work among them as among any replicas.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

from libs.runtime import run_service
from services.inference.config import InferenceSettings
from services.inference.service import SPEC

_CHILD = "LATHE_INFERENCE_CHILD"


def main() -> None:
    processes = InferenceSettings().processes
    children: list[subprocess.Popen[bytes]] = []
    if processes > 1 and not os.environ.get(_CHILD):
        env = {**os.environ, _CHILD: "1"}
        children = [
            subprocess.Popen([sys.executable, "-m", "services.inference"], env=env)
            for _ in range(processes - 1)
        ]
    try:
        # Returns on SIGTERM/SIGINT; the children are told next.
        run_service(dataclasses.replace(SPEC, reuse_port=processes > 1))
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=30)


if __name__ == "__main__":
    main()
