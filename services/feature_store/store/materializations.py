"""Materialization watermarks: what each batch view version has loaded.

A run resumes from its view version's ``Loaded`` rectangle (domain/materialization.py:
source rows with a watermark at or before ``through`` and an event time at or before
``event_through``) and advances it in the same transaction as each page it writes, so a
run interrupted anywhere resumes exactly where its last page committed.
"""

from __future__ import annotations

import asyncpg

from services.feature_store.domain.materialization import Loaded
from services.feature_store.domain.times import utc

_READ = """
    SELECT through, event_through FROM feature_store.materializations
    WHERE view = $1 AND version = $2"""
_ADVANCE = """
    INSERT INTO feature_store.materializations (view, version, through, event_through)
    VALUES ($1, $2, $3, $4) ON CONFLICT (view, version)
    DO UPDATE SET through = EXCLUDED.through, event_through = EXCLUDED.event_through,
                  updated_at = now()"""


async def loaded(conn: asyncpg.Connection, view: str, version: int) -> Loaded | None:
    """What the view version has loaded; None before its first page."""
    row = await conn.fetchrow(_READ, view, version)
    if row is None:
        return None
    bound = row["event_through"]
    return Loaded(utc(row["through"]), None if bound is None else utc(bound))


async def advance(conn: asyncpg.Connection, view: str, version: int, state: Loaded) -> None:
    """Record ``state`` as what the view version has loaded (in the caller's transaction)."""
    await conn.execute(_ADVANCE, view, version, state.through, state.event_through)
