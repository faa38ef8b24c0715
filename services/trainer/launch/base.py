"""The launcher interface and the one worker command both launchers run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

WORKER_MODULE = "services.trainer.training.worker"


class RunningAttempt(Protocol):
    """An attempt's processes, wherever they run."""

    process_group: int
    """The local process group (0 elsewhere)."""

    async def wait(self) -> int:
        """The launcher's exit code once every worker has ended."""

    async def kill(self) -> None:
        """Stop every process of the attempt; returns once they are gone."""


class Launcher(Protocol):
    name: str

    async def start(
        self, *, job_id: str, attempt_id: str, plan_path: Path, processes: int, threads: int
    ) -> RunningAttempt:
        """Start the attempt's workers."""


def worker_command(
    *,
    job_id: str,
    attempt_id: str,
    plan_path: str,
    processes: int,
    nnodes: int = 1,
    rendezvous: str = "",
    python: str = sys.executable,
) -> list[str]:
    """``python -m torch.distributed.run ... -m services.trainer.training.worker ...``.

    ``--job-id`` and ``--attempt-id`` on every process's command line let the service find
    the attempt's processes (workers live in sessions of their own, see worker.py).
    """
    command = [
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={processes}",
    ]
    if rendezvous:
        command += [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous}",
            f"--rdzv-id={attempt_id}",
        ]
    else:
        command += ["--standalone"]
    command += [
        "--max-restarts=0",
        "-m",
        WORKER_MODULE,
        f"--plan={plan_path}",
        f"--attempt-id={attempt_id}",
        f"--job-id={job_id}",
    ]
    return command
