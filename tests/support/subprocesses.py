"""Starting test workers as separate OS processes (so they can be SIGKILLed)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


async def start_worker(
    module: str, *args: str, log_path: Path, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``python -m module args`` with this process's environment plus ``env``."""
    env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")]),
    }
    log = log_path.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args, stdout=log, stderr=log, env=env, cwd=REPO_ROOT
        )
    finally:
        log.close()


async def sigkill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()


async def sigterm(process: asyncio.subprocess.Process, timeout_s: float = 10.0) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(process.wait(), timeout_s)
