"""Finding and killing an attempt's processes on this machine.

torchrun's agent starts every worker with ``start_new_session=True``
(torch/distributed/elastic/multiprocessing/subprocess_handler), so the workers are not in
the agent's process group: killing the group stops the agent and leaves the workers
running under PID 1 (measured here, and what ADR 0017 is about). An attempt's processes
are therefore found by what every one of them carries on its command line,
``--attempt-id=<id>`` (or ``--job-id=<id>``), and killed one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import psutil


def attempt_processes(*, attempt_id: str = "", job_id: str = "") -> list[psutil.Process]:
    """Live processes whose command line names this attempt (or any attempt of this job)."""
    markers = [
        m
        for m in (
            f"--attempt-id={attempt_id}" if attempt_id else "",
            f"--job-id={job_id}" if job_id else "",
        )
        if m
    ]
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = process.info["cmdline"] or []
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if process.pid != os.getpid() and any(m in cmdline for m in markers):
            found.append(process)
    return found


async def kill_attempt(
    *, attempt_id: str = "", job_id: str = "", process_group: int = 0, timeout_s: float = 10.0
) -> int:
    """SIGKILL the attempt's process group and every process carrying its marker; wait.

    Returns how many processes were killed. Raises TimeoutError if some survive.
    """
    if process_group > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process_group, signal.SIGKILL)
    killed = 0
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        survivors = attempt_processes(attempt_id=attempt_id, job_id=job_id)
        if not survivors:
            return killed
        for process in survivors:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                process.send_signal(signal.SIGKILL)
                killed += 1
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(
                f"processes {[p.pid for p in survivors]} of attempt {attempt_id} survive SIGKILL"
            )
        await asyncio.sleep(0.05)
