"""Upload leases in Postgres: which registry processes are alive to finish their uploads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import asyncpg

_RENEW = """
    INSERT INTO model_registry.upload_leases (owner, host, pid, expires_at)
    VALUES ($1, $2, $3, now() + $4::interval)
    ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at"""
_LIVE = """
    SELECT owner FROM model_registry.upload_leases
    WHERE owner = ANY($1::text[]) AND expires_at > now()"""
_FORGET = "DELETE FROM model_registry.upload_leases WHERE owner = ANY($1::text[])"
_FORGET_LAPSED = "DELETE FROM model_registry.upload_leases WHERE expires_at < now() - $1::interval"


class UploadLeases:
    """One row per registry process that has held an upload lease (migration 0005)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def renew(self, owner: str, *, host: str, pid: int, lease: timedelta) -> None:
        """Hold ``owner``'s lease for ``lease`` from now (Postgres's clock)."""
        await self._pool.execute(_RENEW, owner, host, pid, lease)

    async def live(self, owners: Sequence[str]) -> set[str]:
        """Those of ``owners`` whose lease has not lapsed."""
        rows = await self._pool.fetch(_LIVE, list(owners))
        return {row["owner"] for row in rows}

    async def forget(self, owners: Sequence[str]) -> None:
        await self._pool.execute(_FORGET, list(owners))

    async def forget_lapsed(self, older_than: timedelta) -> None:
        """Drop the rows of leases that lapsed longer than ``older_than`` ago."""
        await self._pool.execute(_FORGET_LAPSED, older_than)
