"""Feature store: one hot entity's long stream windows, read at serving time.

A merchant with a payment every minute has ~10,000 one-minute tiles in a 7-day window.
Measured in process (the stream-window part of an online read: ``WindowReader.read``,
query + decode + combine) for 1 hour, 1 day and 7 day windows over tiles and rollups
(ADR 0011), next to the raw building block: one asyncpg query fetching the entity's
7 days of tile rows (no decoding). A diagnostic reads the same data from tiles only, as
a version whose rollups are not complete does.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal

from bench.families import Family
from bench.harness import BenchContext
from bench.results import Comparison, FamilyResult, Role
from bench.service_process import interleaved, measurement
from libs.db import apply_migrations
from libs.eventstore import EventStore
from services.feature_store.app.online.windows import WindowReader
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.service import SPEC
from services.feature_store.store import tiles

_MINUTE = 60_000_000
_WINDOWS = (_MINUTE * 60, _MINUTE * 60 * 24, _MINUTE * 60 * 24 * 7)


@dataclass(frozen=True)
class WindowsParams:
    events_per_minute: float = 1.0
    """The hot entity's event rate over the 7 days."""
    samples: int = 200
    warmup: int = 20
    chunk: int = 20


def _spec(view: str) -> agg.StreamViewSpec:
    functions = (agg.COUNT, agg.SUM, agg.MEAN, agg.MAX)
    aggregations = tuple(
        agg.WindowAggregation(f"{f}_{w}", f, "" if f == agg.COUNT else "amount", w)
        for w in _WINDOWS
        for f in functions
    )
    return agg.StreamViewSpec(view, 1, "payments", "merchant_id", "at", _MINUTE, 0, aggregations)


def _events(params: WindowsParams, now_us: int) -> list[agg.StreamEvent]:
    rng = random.Random(3)
    span = _WINDOWS[-1]
    count = int(params.events_per_minute * span / _MINUTE)
    return [
        agg.StreamEvent(
            "M1",
            now_us - rng.randrange(span),
            now_us,
            i,
            {"amount": Decimal(rng.randint(1, 50_000)) / 100},
        )
        for i in range(count)
    ]


async def run(context: BenchContext, params: WindowsParams) -> FamilyResult:
    now_us = agg.to_us(datetime.now(UTC))
    rolled, unrolled = _spec("hot_rolled"), _spec("hot_tiles_only")
    events = _events(params, now_us)
    built = agg.build_tiles(rolled, events)
    rollups = {k: agg.encode_state(s) for k, s in agg.build_rollups(rolled, built).items()}
    states = {k: agg.encode_state(s) for k, s in built.items()}
    async with context.pool(max_size=4) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(
                conn, "feature_store", [*EventStore.migrations(), *SPEC.migrations]
            )
            async with conn.transaction():
                for spec in (rolled, unrolled):
                    await tiles.replace_tiles(conn, spec.view, 1, states, rollups)
                await tiles.set_rollups_complete(conn, rolled.view, 1, True)
        reader = WindowReader(pool)
        since = agg.from_us(agg.window_start(now_us, _WINDOWS[-1], _MINUTE))
        raw_sql = (
            "SELECT tile_start, state::text FROM feature_store.stream_tiles "
            "WHERE view = $1 AND version = 1 AND entity_key = $2 AND tile_start >= $3"
        )
        samples = (
            await interleaved(
                {
                    "raw_tiles": lambda: pool.fetch(raw_sql, unrolled.view, "M1", since),
                    "lathe_rollups": lambda: reader.read([(rolled, "M1")], datetime.now(UTC)),
                    "tiles_only": lambda: reader.read([(unrolled, "M1")], datetime.now(UTC)),
                },
                samples=params.samples,
                warmup=params.warmup,
                chunk=params.chunk,
            )
        ).steady
        same = await reader.read([(rolled, "M1"), (unrolled, "M1")], datetime.now(UTC))
    rows = [same[(spec.view, 1)]["M1"].row for spec in (rolled, unrolled)]
    variants = [
        measurement(
            "raw_tiles",
            "raw asyncpg: the entity's 7 days of tile rows, fetched, not decoded",
            Role.BASELINE,
            samples["raw_tiles"],
        ),
        measurement(
            "lathe_rollups",
            "Lathe WindowReader: 1 h, 1 d, 7 d windows from rollups + edge tiles",
            Role.LATHE,
            samples["lathe_rollups"],
        ),
        measurement(
            "tiles_only",
            "the same read from tiles only (rollups not complete)",
            Role.DIAGNOSTIC,
            samples["tiles_only"],
        ),
    ]
    notes = [
        f"{len(events):,} events: {len(built):,} tiles, {len(rollups):,} rollups; both reads "
        f"returned {'identical' if rows[0] == rows[1] else 'DIFFERENT'} values."
    ]
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=[
            Comparison(
                "hot_entity",
                "One hot entity, 12 features over 1 h / 1 d / 7 d windows of one-minute tiles",
                "p50",
                False,
                ["p50", "p90", "p99", "max", "mean"],
                variants,
                notes=notes,
            )
        ],
    )


FAMILY = Family(
    name="features.windows",
    summary="A hot entity's long stream windows: rollups vs tiles vs raw asyncpg",
    params=WindowsParams,
    run=run,
    quick={"events_per_minute": 0.2, "samples": 30, "warmup": 5, "chunk": 10},
)
