"""Fixtures for hosting a service in the test process on a database of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import asyncpg
import pytest_asyncio

from tests.support.infra import InfraEndpoints


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_database_url(infra: InfraEndpoints) -> AsyncIterator[str]:
    """A database of this test's own: a hosted service's schema and relay start empty."""
    name = f"{infra.database_name}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlparse(infra.admin_database_url)._replace(path=f"/{name}").geturl()
    admin = await asyncpg.connect(infra.admin_database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
