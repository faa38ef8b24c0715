"""The machine and servers a run measured, so numbers are never read without context.

Benchmarks on a 2-core box shared with other engineers' test runs are noisy;
the load average before and after a run tells a reader how much to trust it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from bench.harness import BenchContext
from libs.platform.scratch import ScratchServers


def machine_info() -> dict[str, Any]:
    """CPU, memory, interpreter and library versions, and the repo's commit."""
    return {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {
            name: _package_version(name)
            for name in ("asyncpg", "nats-py", "grpcio", "protobuf", "opentelemetry-sdk")
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_modified": (_git("status", "--porcelain", "--untracked-files=no") or "").splitlines(),
        "measured_sources_sha256": _digest("libs/eventstore", "libs/messaging", "libs/db"),
        "load_average_start": list(os.getloadavg()),
    }


async def server_info(servers: ScratchServers, context: BenchContext) -> dict[str, Any]:
    """Versions and the durability settings that decide commit latency."""
    conn = await asyncpg.connect(context.database_url)
    try:
        postgres = {
            "version": await conn.fetchval("SHOW server_version"),
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "fsync": await conn.fetchval("SHOW fsync"),
            "shared_buffers": await conn.fetchval("SHOW shared_buffers"),
        }
    finally:
        await conn.close()
    async with context.nats(name="lathe-bench-info") as client:
        version = client.connected_server_version
        nats = {"version": f"{version.major}.{version.minor}.{version.patch}"}
    host = servers.admin_database_url.split("@")[-1].split("/")[0]
    return {
        "postgres": {"address": host, "embedded": "postgres" in servers.embedded, **postgres},
        "nats": {
            "url": servers.nats_url,
            "embedded": "nats" in servers.embedded,
            "jetstream_storage": "file",
            **nats,
        },
        "database": context.database_url.rsplit("/", 1)[-1],
        "namespace": context.namespace,
    }


def _digest(*directories: str) -> dict[str, str]:
    """Per directory, a hash of its Python files: which library code produced the numbers.

    Others edit ``libs/`` while benchmarks run; the commit alone does not say
    whether a run measured the committed code or someone's work in progress.
    """
    root = Path(__file__).resolve().parent.parent
    digests = {}
    for directory in directories:
        sha = hashlib.sha256()
        for path in sorted((root / directory).rglob("*.py")):
            sha.update(path.relative_to(root).as_posix().encode())
            sha.update(path.read_bytes())
        digests[directory] = sha.hexdigest()[:16]
    return digests


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()
