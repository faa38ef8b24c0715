"""Running the `lathe` command as an engineer types it, against services hosted in tests."""

from __future__ import annotations

import asyncio
import os
import sys

from libs.config import LatheSettings, ServiceName
from tests.support.subprocesses import REPO_ROOT


async def run_lathe(settings: LatheSettings, *args: str) -> tuple[int, str]:
    """``lathe <args>`` dialing the services of ``settings``; (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATHE_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")]),
        COLUMNS="200",
        **{f"LATHE_{name.value.upper()}_ADDR": settings.service_addr(name) for name in ServiceName},
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libs.cli",
        *args,
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()
