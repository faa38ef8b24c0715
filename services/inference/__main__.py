"""``python -m services.inference``: run the inference service (N processes, one port).

With ``LATHE_INFERENCE_PROCESSES=n`` (n > 1) this process starts n - 1 more, and all n
listen on the same address with SO_REUSEPORT, so the kernel spreads connections over
them and Python's per-request work uses n cores. Each process is a full replica: it
loads every deployment itself and serves it; the durable consumer and the relay share
their work among them as among any replicas. How the processes share one metrics port
and stop together: ``libs.runtime.processes``.
"""

from __future__ import annotations

from libs.runtime.processes import run_service_processes
from services.inference.config import InferenceSettings
from services.inference.service import SPEC


def main() -> None:
    run_service_processes(
        SPEC, processes=InferenceSettings().processes, module="services.inference"
    )


if __name__ == "__main__":
    main()
