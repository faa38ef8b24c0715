"""Materialization watermarks: how far each batch view version has been loaded.

A run resumes from its view version's watermark (the last source watermark it loaded,
see store/sources.py) and advances it in the same transaction as each page it writes,
so a run interrupted anywhere resumes exactly where its last page committed.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

_READ = "SELECT through FROM feature_store.materializations WHERE view = $1 AND version = $2"
_ADVANCE = """
    INSERT INTO feature_store.materializations (view, version, through)
    VALUES ($1, $2, $3) ON CONFLICT (view, version)
    DO UPDATE SET through = EXCLUDED.through, updated_at = now()"""


async def watermark(conn: asyncpg.Connection, view: str, version: int) -> datetime | None:
    """The view version's watermark; None before its first page."""
    through: datetime | None = await conn.fetchval(_READ, view, version)
    return through


async def advance(conn: asyncpg.Connection, view: str, version: int, through: datetime) -> None:
    """Record ``through`` as the view version's watermark (in the caller's transaction)."""
    await conn.execute(_ADVANCE, view, version, through)
