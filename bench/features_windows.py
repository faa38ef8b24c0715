"""Feature store: one hot entity's long stream windows, read at serving time.

A merchant with a payment every minute has ~10,000 one-minute tiles in a 7-day window.
Measured in process (the stream-window part of an online read: ``WindowReader.read``,
query + decode + combine) for 1 hour, 1 day and 7 day windows over tiles and rollups
(ADR 0011), next to the raw building block: one asyncpg query fetching the entity's
7 days of tile rows (no decoding). A diagnostic reads the same data from tiles only, as
a version whose rollups are not complete does.

In the same run (ADR 0022): the same hot entity read with the aggregations whose partials
are sketches and exact moments — STDDEV over 1 h / 1 d / 7 d, the 50th and 99th
PERCENTILE and COUNT_DISTINCT of merchants over 7 days, and a lifetime count and sum —
next to the 12 classic features, from rollups + edge tiles + the lifetime row.
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
from lathe.feature_store.v1 import message_pb2 as m
from libs.db import apply_migrations
from libs.eventstore import EventStore
from services.feature_store.app.online.windows import WindowReader
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.domain.streaming.sketches import distinct_key
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


def _spec(view: str, sketches: bool = False) -> agg.StreamViewSpec:
    functions = (agg.COUNT, agg.SUM, agg.MEAN, agg.MAX)
    aggregations = tuple(
        agg.WindowAggregation(f"{f}_{w}", f, "" if f == agg.COUNT else "amount", w)
        for w in _WINDOWS
        for f in functions
    )
    if sketches:
        week = _WINDOWS[-1]
        aggregations += (
            *(agg.WindowAggregation(f"sd_{w}", agg.STDDEV, "amount", w) for w in _WINDOWS),
            agg.WindowAggregation("p50_7d", agg.PERCENTILE, "amount", week, percentile=50),
            agg.WindowAggregation("p99_7d", agg.PERCENTILE, "amount", week, percentile=99),
            agg.WindowAggregation("merchants_7d", agg.COUNT_DISTINCT, "merchant", week),
            agg.WindowAggregation("count_ever", agg.COUNT, "", 0, lifetime=True),
            agg.WindowAggregation("sum_ever", agg.SUM, "amount", 0, lifetime=True),
        )
    return agg.StreamViewSpec(view, 1, "payments", "merchant_id", "at", _MINUTE, 0, aggregations)


def _events(params: WindowsParams, now_us: int) -> list[agg.StreamEvent]:
    """The hot entity's events as the sketch view parses them (``_classic``: as the view
    without sketches does)."""
    rng = random.Random(3)
    span = _WINDOWS[-1]
    count = int(params.events_per_minute * span / _MINUTE)
    events = []
    for i in range(count):
        amount = Decimal(rng.randint(1, 50_000)) / 100
        merchant = distinct_key(f"shop-{rng.randrange(2_000)}")
        parts = {"m:amount": amount, "q:amount": float(amount), "d:merchant": merchant}
        at = now_us - rng.randrange(span)
        events.append(agg.StreamEvent("M1", at, at, i, {"amount": amount}, parts))
    return events


def _classic(events: list[agg.StreamEvent]) -> list[agg.StreamEvent]:
    return [
        agg.StreamEvent(e.entity_key, e.event_us, e.arrival_us, e.sequence, e.values)
        for e in events
    ]


async def run(context: BenchContext, params: WindowsParams) -> FamilyResult:
    now_us = agg.to_us(datetime.now(UTC))
    rolled, unrolled = _spec("hot_rolled"), _spec("hot_tiles_only")
    sketched = _spec("hot_sketches", sketches=True)
    events = _events(params, now_us)
    built = agg.build_tiles(rolled, _classic(events))
    rollups = {k: agg.encode_state(s) for k, s in agg.build_rollups(rolled, built).items()}
    states = {k: agg.encode_state(s) for k, s in built.items()}
    built_more = agg.build_tiles(sketched, events)
    rollups_more = {
        k: agg.encode_state(s) for k, s in agg.build_rollups(sketched, built_more).items()
    }
    states_more = {k: agg.encode_state(s) for k, s in built_more.items()}
    lifetimes, _ = agg.build_lifetimes(sketched, events)
    async with context.pool(max_size=4) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(
                conn, "feature_store", [*EventStore.migrations(), *SPEC.migrations]
            )
            async with conn.transaction():
                for spec in (rolled, unrolled):
                    await tiles.replace_tiles(conn, spec.view, 1, states, rollups)
                await tiles.set_rollups_complete(conn, rolled.view, 1, True)
                await tiles.replace_tiles(conn, sketched.view, 1, states_more, rollups_more, {})
                await tiles.replace_lifetimes(
                    conn, sketched.view, 1, {k: agg.encode_state(s) for k, s in lifetimes.items()}
                )
                await tiles.set_rollups_complete(conn, sketched.view, 1, True)
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
                    "lathe_sketches": lambda: reader.read([(sketched, "M1")], datetime.now(UTC)),
                },
                samples=params.samples,
                warmup=params.warmup,
                chunk=params.chunk,
            )
        ).steady
        same = await reader.read(
            [(rolled, "M1"), (unrolled, "M1"), (sketched, "M1")], datetime.now(UTC)
        )
    rows = [same[(spec.view, 1)]["M1"].row for spec in (rolled, unrolled)]
    more = m.FeatureRow.FromString(same[(sketched.view, 1)]["M1"].row).values
    classic = m.FeatureRow.FromString(rows[0]).values
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
    sketch_variants = [
        measurement(
            "lathe_rollups",
            "the 12 classic features (as above)",
            Role.BASELINE,
            samples["lathe_rollups"],
        ),
        measurement(
            "lathe_sketches",
            "12 classic + STDDEV 1 h/1 d/7 d, PERCENTILE p50/p99 7 d, COUNT_DISTINCT 7 d, "
            "lifetime count and sum",
            Role.LATHE,
            samples["lathe_sketches"],
        ),
    ]
    notes = [
        f"{len(events):,} events: {len(built):,} tiles, {len(rollups):,} rollups; both reads "
        f"returned {'identical' if rows[0] == rows[1] else 'DIFFERENT'} values."
    ]
    named = dict(zip([a.name for a in sketched.aggregations], more, strict=True))
    merchants = len({e.parts["d:merchant"] for e in events})

    def size(states: dict[agg.TileKey, str]) -> str:
        return f"{sum(map(len, states.values())):,}"

    sketch_notes = [
        f"classic features equal: {list(more)[: len(classic)] == list(classic)}; "
        f"p50 {named['p50_7d'].float64_value:.2f}, p99 {named['p99_7d'].float64_value:.2f}, "
        f"stddev 7 d {named[f'sd_{_WINDOWS[-1]}'].float64_value:.2f}, merchants "
        f"{named['merchants_7d'].int64_value} (exact {merchants}), lifetime count "
        f"{named['count_ever'].int64_value}.",
        f"state bytes: rollups {size(rollups_more)} with sketches vs {size(rollups)} without; "
        f"tiles {size(states_more)} vs {size(states)}.",
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
            ),
            Comparison(
                "hot_entity_sketches",
                "The same entity with STDDEV, PERCENTILE, COUNT_DISTINCT and lifetime features",
                "p50",
                False,
                ["p50", "p90", "p99", "max", "mean"],
                sketch_variants,
                notes=sketch_notes,
            ),
        ],
    )


FAMILY = Family(
    name="features.windows",
    summary="A hot entity's long stream windows: rollups vs tiles vs raw asyncpg",
    params=WindowsParams,
    run=run,
    quick={"events_per_minute": 0.2, "samples": 30, "warmup": 5, "chunk": 10},
)
