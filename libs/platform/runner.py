"""`lathe up` / `down` / `status`: the whole platform on one machine.

Postgres and NATS are the ones at LATHE_DATABASE_URL / LATHE_NATS_URL when set;
otherwise embedded ones from pip wheels, under ``$LATHE_HOME`` on ports of their
own (never 5432/4222), so they sit beside a system Postgres or NATS. The four
services run as separate OS processes; each applies its schema migrations
before it reports SERVING, and `up` returns once all four do.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

import libs
from libs.config import LatheSettings, ServiceName
from libs.messaging import connect_nats
from libs.platform.health import health_status
from libs.platform.nats import EmbeddedNats
from libs.platform.postgres import DATABASE, EmbeddedPostgres
from libs.platform.processes import (
    is_alive,
    pick_port,
    port_is_free,
    spawn_detached,
    stop_process_tree,
)
from libs.platform.state import PlatformState, ProcessRecord, ServiceRecord

SERVICE_MODULES: dict[ServiceName, str] = {name: f"services.{name.value}" for name in ServiceName}
_EMBEDDED_POSTGRES_PORT = 55432
_EMBEDDED_NATS_PORT = 54222
_METRICS_PORTS = {
    ServiceName.FEATURE_STORE: 9451,
    ServiceName.MODEL_REGISTRY: 9452,
    ServiceName.TRAINER: 9453,
    ServiceName.INFERENCE: 9454,
}

Progress = Callable[[str], None]


class PlatformError(RuntimeError):
    """`lathe up` could not bring the platform up; the message says why and where to look."""


@dataclass(frozen=True)
class ServiceStatus:
    name: ServiceName
    addr: str
    pid: int
    alive: bool
    health: str
    log_path: str


class Platform:
    """Starts, inspects and stops the platform described by ``settings``."""

    def __init__(self, settings: LatheSettings) -> None:
        self._settings = settings
        self.home = settings.home.resolve()

    async def up(self, *, timeout_s: float = 120.0, progress: Progress = print) -> PlatformState:
        existing = PlatformState.load(self.home)
        if existing is not None:
            statuses = await self.service_statuses(existing)
            if statuses and all(s.health == "SERVING" for s in statuses):
                progress("the platform is already up")
                return existing
            progress("a previous platform is partly running; stopping it first")
            await self.down(progress=progress)

        state = PlatformState(database_url="", nats_url="", namespace=self._settings.namespace)
        try:
            await self._start_postgres(state, progress)
            await self._start_nats(state, progress)
            state.save(self.home)
            for name in ServiceName:
                state.services[name.value] = self._start_service(name, state)
                progress(f"started {name.display_name} (pid {state.services[name.value].pid})")
            state.save(self.home)
            await self._wait_until_serving(state, timeout_s, progress)
        except BaseException:
            state.save(self.home)
            await self.down(progress=progress)
            raise
        return state

    async def _start_postgres(self, state: PlatformState, progress: Progress) -> None:
        if self._settings.database_url:
            state.database_url = self._settings.database_url
            progress(f"using Postgres at {_redact(state.database_url)}")
            return
        server = EmbeddedPostgres(
            self.home / "postgres" / "data", pick_port("127.0.0.1", _EMBEDDED_POSTGRES_PORT)
        )
        state.embedded_postgres_dir = str(server.data_dir)
        state.embedded_postgres_port = server.port
        await asyncio.to_thread(server.start)
        admin = await asyncpg.connect(server.url.rsplit("/", 1)[0] + "/postgres")
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await admin.close()
        state.database_url = server.url
        progress(
            f"embedded Postgres listening on 127.0.0.1:{server.port} (data: {server.data_dir})"
        )

    async def _start_nats(self, state: PlatformState, progress: Progress) -> None:
        if self._settings.nats_url:
            state.nats_url = self._settings.nats_url
            progress(f"using NATS at {state.nats_url}")
            return
        server = EmbeddedNats(
            self.home / "nats" / "data", pick_port("127.0.0.1", _EMBEDDED_NATS_PORT)
        )
        state.embedded_nats = ProcessRecord(pid=server.start(), log_path=str(server.log_path))
        state.embedded_nats_port = server.port
        client = await connect_nats(server.url, connect_timeout_s=20)
        await client.close()
        state.nats_url = server.url
        progress(f"embedded NATS (JetStream) listening on 127.0.0.1:{server.port}")

    def _start_service(self, name: ServiceName, state: PlatformState) -> ServiceRecord:
        addr = self._settings.service_addr(name)
        host, _, port = addr.rpartition(":")
        if not port_is_free(host or "127.0.0.1", int(port)):
            raise PlatformError(
                f"{name.display_name} cannot listen on {addr}: another process is using it. "
                "Stop it (`lathe down` if it is an old Lathe) or set "
                f"LATHE_{name.value.upper()}_ADDR."
            )
        metrics_port = pick_port("127.0.0.1", _METRICS_PORTS[name])
        repo_root = Path(libs.__file__).resolve().parent.parent
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(repo_root), str(repo_root / "gen" / "python")]),
            "LATHE_DATABASE_URL": state.database_url,
            "LATHE_NATS_URL": state.nats_url,
            "LATHE_HOME": str(self.home),
            "LATHE_NAMESPACE": state.namespace,
            "LATHE_METRICS_PORT": str(metrics_port),
            **{
                f"LATHE_{other.value.upper()}_ADDR": self._settings.service_addr(other)
                for other in ServiceName
            },
        }
        log_path = self.home / "logs" / f"{name.display_name}.log"
        pid = spawn_detached(
            [sys.executable, "-m", SERVICE_MODULES[name]], log_path=log_path, env=env, cwd=repo_root
        )
        return ServiceRecord(pid=pid, log_path=str(log_path), addr=addr, metrics_port=metrics_port)

    async def _wait_until_serving(
        self, state: PlatformState, timeout_s: float, progress: Progress
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = await self.service_statuses(state)
            dead = [s for s in statuses if not s.alive]
            if dead:
                raise PlatformError(
                    "; ".join(
                        f"{s.name.display_name} exited during start-up:\n{_tail(s.log_path)}"
                        for s in dead
                    )
                )
            if all(s.health == "SERVING" for s in statuses):
                for s in statuses:
                    progress(f"{s.name.display_name:15} SERVING on {s.addr}")
                return
            if time.monotonic() > deadline:
                waiting = ", ".join(
                    f"{s.name.display_name}={s.health}" for s in statuses if s.health != "SERVING"
                )
                raise PlatformError(
                    f"services not SERVING after {timeout_s:.0f}s ({waiting}); "
                    "see `lathe logs <service>`"
                )
            await asyncio.sleep(0.2)

    async def service_statuses(self, state: PlatformState) -> list[ServiceStatus]:
        async def one(name: str, record: ServiceRecord) -> ServiceStatus:
            alive = is_alive(record.pid)
            health = await health_status(record.addr) if alive else "STOPPED"
            return ServiceStatus(
                ServiceName(name), record.addr, record.pid, alive, health, record.log_path
            )

        return list(await asyncio.gather(*(one(n, r) for n, r in state.services.items())))

    async def down(self, *, progress: Progress = print) -> None:
        """Stop everything `up` started; afterwards none of its processes is left."""
        state = PlatformState.load(self.home)
        if state is None:
            progress("nothing to stop: the platform is not up")
            return
        grace = self._settings.shutdown_grace_s + 5
        await asyncio.gather(
            *(
                asyncio.to_thread(stop_process_tree, r.pid, timeout_s=grace)
                for r in state.services.values()
            )
        )
        for name in state.services:
            progress(f"stopped {ServiceName(name).display_name}")
        if state.embedded_nats is not None:
            await asyncio.to_thread(stop_process_tree, state.embedded_nats.pid)
            progress("stopped embedded NATS")
        if state.embedded_postgres_dir is not None and state.embedded_postgres_port is not None:
            server = EmbeddedPostgres(
                Path(state.embedded_postgres_dir), state.embedded_postgres_port
            )
            postmaster = server.postmaster_pid()
            await asyncio.to_thread(server.stop)
            if postmaster is not None:
                await asyncio.to_thread(stop_process_tree, postmaster)
            progress("stopped embedded Postgres")
        PlatformState.remove(self.home)


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _redact(url: str) -> str:
    """Hide a password in a URL before printing it."""
    if "@" not in url or ":" not in url.split("@", 1)[0].split("//", 1)[-1]:
        return url
    scheme, rest = url.split("//", 1)
    credentials, host = rest.split("@", 1)
    return f"{scheme}//{credentials.split(':', 1)[0]}:***@{host}"
