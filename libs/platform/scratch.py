"""Postgres and NATS for a test run or a benchmark: the configured ones, else embedded.

Tests and benchmarks run against real servers. They use the machine's (or the
configured) Postgres and NATS when those answer, and otherwise start the
embedded ones from the pip wheels under a scratch directory, so they also work
on a fresh machine.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from libs.platform.nats import EmbeddedNats
from libs.platform.postgres import EmbeddedPostgres
from libs.platform.processes import pick_port, stop_process_tree

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScratchServers:
    admin_database_url: str
    """A database the caller may ``CREATE DATABASE`` from."""
    nats_url: str
    embedded: tuple[str, ...] = ()
    """``postgres`` and/or ``nats`` when the configured server did not answer."""


def tcp_reachable(url: str, default_port: int) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    parsed = urlparse(url)
    address = (parsed.hostname or "127.0.0.1", parsed.port or default_port)
    try:
        with socket.create_connection(address, 1):
            return True
    except OSError:
        return False


@contextmanager
def scratch_servers(database_url: str, nats_url: str, scratch: Path) -> Iterator[ScratchServers]:
    """Yield reachable servers, starting embedded ones under ``scratch`` where needed."""
    embedded: list[str] = []
    postgres: EmbeddedPostgres | None = None
    nats_pid: int | None = None
    try:
        if not tcp_reachable(database_url, 5432):
            _log.warning("no Postgres at %s; starting the embedded one", database_url)
            postgres = EmbeddedPostgres(
                scratch / "postgres" / "data", pick_port("127.0.0.1", 55433)
            )
            postgres.start()
            database_url = postgres.url.rsplit("/", 1)[0] + "/postgres"
            embedded.append("postgres")
        if not tcp_reachable(nats_url, 4222):
            _log.warning("no NATS at %s; starting the embedded one", nats_url)
            nats = EmbeddedNats(scratch / "nats" / "data", pick_port("127.0.0.1", 54223))
            nats_pid = nats.start()
            nats_url = nats.url
            embedded.append("nats")
        yield ScratchServers(database_url, nats_url, tuple(embedded))
    finally:
        if nats_pid is not None:
            stop_process_tree(nats_pid)
        if postgres is not None:
            postgres.stop()
