"""The local launcher: torchrun on this machine, one process group per attempt."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from services.trainer.launch.base import worker_command
from services.trainer.launch.processes import kill_attempt

_REPO_ROOT = Path(__file__).resolve().parents[3]


class LocalAttempt:
    def __init__(
        self, process: asyncio.subprocess.Process, attempt_id: str, kill_timeout_s: float
    ) -> None:
        self._process = process
        self._attempt_id = attempt_id
        self._kill_timeout_s = kill_timeout_s
        self.process_group = process.pid  # start_new_session: the agent leads its own group

    async def wait(self) -> int:
        return await self._process.wait()

    async def kill(self) -> None:
        await kill_attempt(
            attempt_id=self._attempt_id,
            process_group=self.process_group,
            timeout_s=self._kill_timeout_s,
        )
        await self._process.wait()


class LocalLauncher:
    name = "local"

    def __init__(
        self, *, kill_timeout_s: float = 10.0, extra_env: dict[str, str] | None = None
    ) -> None:
        self._kill_timeout_s = kill_timeout_s
        self._extra_env = extra_env or {}

    async def start(
        self, *, job_id: str, attempt_id: str, plan_path: Path, processes: int, threads: int
    ) -> LocalAttempt:
        paths = [str(_REPO_ROOT), str(_REPO_ROOT / "gen" / "python")]
        env = {
            **os.environ,
            **self._extra_env,
            "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        log = (plan_path.parent / "workers.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(
                    job_id=job_id,
                    attempt_id=attempt_id,
                    plan_path=str(plan_path),
                    processes=processes,
                ),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=_REPO_ROOT,
                start_new_session=True,  # the attempt's own group: no signal from the service's
            )
        finally:
            log.close()
        return LocalAttempt(process, attempt_id, self._kill_timeout_s)
