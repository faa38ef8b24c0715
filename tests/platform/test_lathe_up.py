"""`lathe up` / `status` / `down` as a user runs them: real processes, real servers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import grpc
import psutil
import pytest

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import ServiceName
from libs.platform.state import PlatformState
from tests.conftest import free_port
from tests.support.infra import InfraEndpoints
from tests.support.subprocesses import REPO_ROOT

pytestmark = pytest.mark.slow


def _lathe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.cli", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _environment(home: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATHE_", "OTEL_"))}
    env["LATHE_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen" / "python")])
    for name in ServiceName:
        env[f"LATHE_{name.value.upper()}_ADDR"] = f"127.0.0.1:{free_port()}"
    env.update(overrides)
    return env


def _get(url: str) -> str:
    deadline = time.monotonic() + 10
    while True:  # the relay publishes within milliseconds; the counter appears with it
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        if "lathe_relay_events_published" in body or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def _recorded_pids(state: PlatformState) -> list[int]:
    pids = [record.pid for record in state.services.values()]
    if state.embedded_nats is not None:
        pids.append(state.embedded_nats.pid)
    if state.embedded_postgres_dir is not None:
        pid_file = Path(state.embedded_postgres_dir) / "postmaster.pid"
        pids.append(int(pid_file.read_text().splitlines()[0]))
    return pids


async def _create_model(env: dict[str, str]) -> str:
    name = f"up-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(env["LATHE_MODEL_REGISTRY_ADDR"]) as channel:
        response = await ModelRegistryStub(channel).CreateModel(
            rr.CreateModelRequest(name=name, owner="platform-test"), timeout=10
        )
    return response.model.name


def _assert_down_leaves_nothing(env: dict[str, str], home: Path, pids: list[int]) -> None:
    result = _lathe(env, "down")
    assert result.returncode == 0, result.stdout + result.stderr
    survivors = [
        pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert survivors == [], f"processes left behind: {survivors}"
    assert PlatformState.load(home) is None


async def test_up_on_embedded_servers_beside_the_system_ones(tmp_path: Path) -> None:
    env = _environment(tmp_path / "home")
    up = _lathe(env, "up")
    state = PlatformState.load(tmp_path / "home")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert state is not None
        assert state.embedded_postgres_port not in (None, 5432)
        assert state.embedded_nats_port not in (None, 4222)
        status = _lathe(env, "status")
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("SERVING") == 4
        assert await _create_model(env)
        metrics_port = state.services[ServiceName.MODEL_REGISTRY.value].metrics_port
        metrics = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
        assert "lathe_relay_events_published" in metrics
        log = _lathe(env, "logs", "model-registry", "-n", "200")
        assert "SERVING" in log.stdout
    finally:
        pids = _recorded_pids(state) if state else []
        _assert_down_leaves_nothing(env, tmp_path / "home", pids)


async def test_up_uses_the_servers_at_the_configured_urls(
    tmp_path: Path, infra: InfraEndpoints
) -> None:
    database = f"lathe_test_{uuid.uuid4().hex[:10]}_up"
    admin = await asyncpg.connect(infra.admin_database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    database_url = infra.admin_database_url.rsplit("/", 1)[0] + f"/{database}"
    env = _environment(
        tmp_path / "home",
        LATHE_DATABASE_URL=database_url,
        LATHE_NATS_URL=infra.nats_url,
        LATHE_NAMESPACE=f"{infra.namespace}up",
    )
    state = None
    try:
        up = _lathe(env, "up")
        state = PlatformState.load(tmp_path / "home")
        assert up.returncode == 0, up.stdout + up.stderr
        assert state is not None
        assert state.embedded_postgres_dir is None and state.embedded_nats is None
        name = await _create_model(env)
        conn = await asyncpg.connect(database_url)
        try:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM model_registry.models WHERE name = $1", name
                )
                == 1
            )
            schemas = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
        finally:
            await conn.close()
        assert {name.value for name in ServiceName} <= schemas
    finally:
        _assert_down_leaves_nothing(env, tmp_path / "home", _recorded_pids(state) if state else [])
        await asyncio.sleep(0.2)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
