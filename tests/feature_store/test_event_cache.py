"""The parsed-event cache of point-in-time stream aggregates (ADR 0021): every answer
with the cache equals a plain read of the raw-event log at the same moment, through late
events, imports of old history, calls that reach further back, rows of transactions
still in flight when the copy was made, and pruning. Real Postgres."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pyarrow as pa

from libs.db import apply_migrations
from libs.eventstore import EventStore
from libs.sdk.features import (
    Aggregation,
    Entity,
    FeatureView,
    Float64,
    StreamSource,
    String,
    repository_of,
)
from services.feature_store.app.streaming.backfill import import_events
from services.feature_store.app.streaming.event_cache import ParsedEventCache
from services.feature_store.app.streaming.history import stream_aggregates_as_of
from services.feature_store.domain.definitions.rules import validate_repository
from services.feature_store.service import SPEC
from services.feature_store.store import stream_events
from services.feature_store.store.stream_events import RawEvent
from tests.feature_store.helpers import suffix

_HOUR = timedelta(hours=1)
_T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _view(name: str, source: str):  # type: ignore[no-untyped-def]
    loan = Entity("loan", join_key="loan_id")
    view = FeatureView(
        name,
        entity=loan,
        source=StreamSource(source, event_time_field="at"),
        aggregations=[
            Aggregation("amount", "sum", 6 * _HOUR, "amount_sum_6h"),
            Aggregation("merchant", "count_distinct", 6 * _HOUR, "merchants_6h"),
            Aggregation(
                "",
                "last_n",
                12 * _HOUR,
                "recent",
                n=3,
                columns={"amount": Float64, "merchant": String},
            ),
        ],
        allowed_lateness=2 * _HOUR,
    )
    return validate_repository(repository_of([loan, view]), []).feature_views[0]


def _events(
    rng: random.Random, count: int, *, arrived: datetime, spread_h: float
) -> list[RawEvent]:
    """Events over ``spread_h`` hours before ``arrived``; each arrives within the lateness
    (some late, some rejected: too late, not JSON, a missing column)."""
    events = []
    for i in range(count):
        at = arrived - timedelta(hours=rng.uniform(0, spread_h))
        arrival = at + timedelta(minutes=rng.choice([0, 0, 5, 90, 200]))  # 200 min: late
        body: dict[str, object] = {"loan_id": f"L{rng.randrange(6)}", "at": at.isoformat()}
        if i % 9:
            body["amount"] = round(rng.uniform(-50, 500), 2)
        if i % 4:
            body["merchant"] = f"m{rng.randrange(5)}"
        payload = b"{not json" if i % 23 == 0 else json.dumps(body).encode()
        events.append(RawEvent(uuid.uuid4(), rng.randrange(1 << 40), arrival, payload))
    return events


async def _same(pool: asyncpg.Pool, cache: ParsedEventCache, view, keys, times) -> pa.Table:  # type: ignore[no-untyped-def]
    cached = await stream_aggregates_as_of(pool, view, "loan_id", keys, times, cache=cache)
    plain = await stream_aggregates_as_of(pool, view, "loan_id", keys, times)
    assert cached.equals(plain)
    return cached


def _labels(
    rng: random.Random, count: int, start: datetime, hours: float
) -> tuple[list[str], list[datetime]]:
    keys = [f"L{rng.randrange(7)}" for _ in range(count)]  # L6: no events
    times = [start + timedelta(hours=rng.uniform(0, hours)) for _ in range(count)]
    return keys, times


async def test_cached_events_answer_as_a_plain_read_does(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, "feature_store", [*EventStore.migrations(), *SPEC.migrations])
    s = suffix()
    source = f"cache_{s}"
    view = _view(f"cached_{s}", source)
    rng = random.Random(11)
    cache = ParsedEventCache()

    await import_events(db_pool, source, _events(rng, 300, arrived=_T0 + 48 * _HOUR, spread_h=40))
    keys, times = _labels(rng, 200, _T0 + 30 * _HOUR, 24)
    first = await _same(db_pool, cache, view, keys, times)
    assert first.column("recent__amount").null_count < len(keys)  # something was found

    # Late events (old event times, arriving now) and an import of old history.
    await import_events(db_pool, source, _events(rng, 80, arrived=_T0 + 52 * _HOUR, spread_h=3))
    await import_events(db_pool, source, _events(rng, 80, arrived=_T0 + 20 * _HOUR, spread_h=20))
    second = await _same(db_pool, cache, view, keys, times)
    assert not second.equals(first)  # the new events changed answers

    # Labels reaching further back than the copy holds, then only later ones.
    early, early_times = _labels(rng, 100, _T0, 12)
    await _same(db_pool, cache, view, early, early_times)
    await _same(db_pool, cache, view, keys[:50], times[:50])
    # Labels of one entity: its events are copied out of the copy (the others are most).
    await _same(db_pool, cache, view, ["L1"] * 20, times[:20])

    # A transaction that logged events before a later one committed, still open when the
    # cache extends its copy: its events count once it commits.
    writer = await db_pool.acquire()
    try:
        open_tx = writer.transaction()
        await open_tx.start()
        await stream_events.import_events(
            writer, source, _events(rng, 40, arrived=_T0 + 40 * _HOUR, spread_h=12)
        )
        await import_events(
            db_pool, source, _events(rng, 40, arrived=_T0 + 41 * _HOUR, spread_h=12)
        )
        await _same(db_pool, cache, view, keys, times)
        await open_tx.commit()
    finally:
        await db_pool.release(writer)
    await _same(db_pool, cache, view, keys, times)

    # Pruning deletes rows: the copy is read again.
    assert await stream_events.prune_events(db_pool, _T0 + 30 * _HOUR) > 0
    await _same(db_pool, cache, view, keys, times)
    await _same(db_pool, cache, view, early, early_times)
