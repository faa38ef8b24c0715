"""Quality records in Postgres: quarantined rows, and the events statistics compare with.

Rows that break an expectation of a view with the QUARANTINE policy are kept here
instead of being served. Statistics read two kinds of recorded events: the expectation
violations of a view (``quality-<view>``) and the feature profiles of a training-set
snapshot (``dataset-<digest>``), the reference drift is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

_QUARANTINE = """
    INSERT INTO feature_store.quarantine (view, version, entity_key, event_time, row, violations)
    VALUES ($1, $2, $3, $4, $5, $6)"""

_LATEST_OF_TYPE = """
    SELECT payload FROM feature_store.events
    WHERE stream_id = $1 AND event_type = $2
    ORDER BY stream_version DESC LIMIT 1"""

_STREAM_PAYLOADS = "SELECT payload FROM feature_store.events WHERE stream_id = $1"


async def quarantine(
    conn: asyncpg.Connection,
    view: str,
    version: int,
    rows: Sequence[tuple[str, datetime, bytes, Sequence[str]]],
) -> None:
    """Keep (entity key, event time, FeatureRow bytes, broken rules) rows aside, in the
    caller's transaction."""
    await conn.executemany(
        _QUARANTINE,
        [(view, version, key, time, row, list(broken)) for key, time, row, broken in rows],
    )


async def latest_event_payload(
    executor: asyncpg.Pool | asyncpg.Connection, stream_id: str, event_type: str
) -> bytes | None:
    """The payload of the stream's latest event of ``event_type``; None if it has none."""
    payload: bytes | None = await executor.fetchval(_LATEST_OF_TYPE, stream_id, event_type)
    return payload


async def event_payloads(
    executor: asyncpg.Pool | asyncpg.Connection, stream_id: str
) -> list[bytes]:
    """The payloads of every event of the stream."""
    return [row["payload"] for row in await executor.fetch(_STREAM_PAYLOADS, stream_id)]
