"""The fuzz test's platform: all four services on a database and namespace of their own.

Inference runs as ``inference_corpus.fuzz_inference_spec`` builds it: following only the
fuzz's own models, on the CPU, logging a sample of predictions and decisions.

Their own database keeps the write fingerprints (which read every table of a service's
schema before and after each call) small and untouched by the rest of the suite, and
keeps what the fuzz creates out of the other tests' way. Both are removed after the run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from libs.config import LatheSettings, ServiceName
from libs.db import connect_pool
from tests.fuzz.corpus import seed_all
from tests.fuzz.inference_corpus import fuzz_inference_spec
from tests.fuzz.oracle import FINGERPRINT_FUNCTION
from tests.fuzz.platform import FuzzPlatform
from tests.fuzz.server_log import ErrorLog
from tests.fuzz.targets import discover_targets, spec_of
from tests.support.hosting import hosted
from tests.support.infra import InfraEndpoints
from tests.support.ports import free_port

TOKEN = "fuzz-token"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzz_database(infra: InfraEndpoints) -> AsyncIterator[str]:
    name = f"{infra.database_name}_fuzz"
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield infra.database_url.replace(infra.database_name, name)
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fuzz_platform(
    infra: InfraEndpoints,
    fuzz_database: str,
    nats_client: NatsClient,  # its teardown deletes this run's streams, ours included
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[FuzzPlatform]:
    settings = LatheSettings(
        database_url=fuzz_database,
        nats_url=infra.nats_url,
        namespace=f"{infra.namespace}_fuzz",
        home=tmp_path_factory.mktemp("fuzz-home"),
        auth_token=SecretStr(TOKEN),
        shutdown_grace_s=1.0,
        relay_poll_interval_s=0.2,
        **{f"{name.value}_addr": f"127.0.0.1:{free_port()}" for name in ServiceName},
    )
    async with AsyncExitStack() as stack:
        pool = await connect_pool(fuzz_database, min_size=1, max_size=4)
        stack.push_async_callback(pool.close)
        await pool.execute(FINGERPRINT_FUNCTION)
        inference, probe = fuzz_inference_spec()
        channels = {}
        for name in ServiceName:
            spec = inference if name == ServiceName.INFERENCE else spec_of(name)
            await stack.enter_async_context(hosted(spec, settings))
            channel = grpc.aio.insecure_channel(settings.service_addr(name))
            stack.push_async_callback(channel.close)
            channels[name] = channel
        errors = ErrorLog()
        errors.install()
        stack.callback(errors.remove)
        platform = FuzzPlatform(
            pool,
            channels,
            TOKEN,
            discover_targets(),
            errors,
            addresses={name: settings.service_addr(name) for name in ServiceName},
            settlers={ServiceName.INFERENCE: probe.settled},
        )
        await seed_all(platform)
        yield platform
        mean_ms = 1000 * platform.call_seconds / max(platform.calls, 1)
        print(  # shown with -s: where the fuzz test's time went
            f"\nfuzz: {platform.calls} calls in {platform.call_seconds:.1f} s "
            f"({mean_ms:.1f} ms each, oracle included)\n{platform.summary()}"
        )
        report = os.environ.get("LATHE_FUZZ_FINDINGS")
        if report:
            platform.findings.write(Path(report))
