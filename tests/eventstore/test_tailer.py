"""Gap-safe tailing against a real Postgres: late commits are never skipped."""

from __future__ import annotations

import asyncio
import random

import asyncpg

from libs.eventstore import NO_STREAM, EventStore, EventTailer
from tests.eventstore.events import note


async def _drain(tailer: EventTailer, conn: asyncpg.Connection) -> list[int]:
    positions: list[int] = []
    while True:
        batch = await tailer.read(conn)
        positions += [e.global_position for e in batch.events]
        if not batch.events and not batch.waiting_on_gap:
            return positions
        if batch.waiting_on_gap:
            await asyncio.sleep(0.001)


async def test_tailer_waits_for_a_lower_position_that_commits_late(event_store: EventStore) -> None:
    pool = event_store.pool
    async with pool.acquire() as slow, pool.acquire() as reader:
        slow_tx = slow.transaction()
        await slow_tx.start()
        early = await event_store.append(
            "slow", [note("early")], expected_version=NO_STREAM, conn=slow
        )
        late = await event_store.append("fast", [note("late")], expected_version=NO_STREAM)
        assert early.positions[0] < late.positions[0]

        tailer = EventTailer(event_store.schema)
        blocked = await tailer.read(reader)
        assert blocked.events == []
        assert blocked.waiting_on_gap

        await slow_tx.commit()
        released = await tailer.read(reader)

    assert [e.global_position for e in released.events] == [early.positions[0], late.positions[0]]


async def test_tailer_skips_a_hole_left_by_a_rollback_once_it_is_final(
    event_store: EventStore,
) -> None:
    pool = event_store.pool
    async with pool.acquire() as doomed, pool.acquire() as reader:
        doomed_tx = doomed.transaction()
        await doomed_tx.start()
        await event_store.append("doomed", [note("never")], expected_version=NO_STREAM, conn=doomed)
        kept = await event_store.append("kept", [note("kept")], expected_version=NO_STREAM)

        tailer = EventTailer(event_store.schema)
        assert (await tailer.read(reader)).waiting_on_gap
        await doomed_tx.rollback()

        positions = await _drain(tailer, reader)

    assert positions == list(kept.positions)
    assert tailer.position == kept.positions[0]


async def test_concurrent_appenders_with_random_commit_delays_are_tailed_exactly_once(
    event_store: EventStore,
) -> None:
    rng = random.Random(20261125)
    writers, appends_per_writer = 10, 40
    done = asyncio.Event()
    committed: set[int] = set()

    async def writer(index: int) -> None:
        for n in range(appends_per_writer):
            async with event_store.pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                result = await event_store.append(
                    f"w{index}-{n}", [note("a"), note("b")], expected_version=NO_STREAM, conn=conn
                )
                await asyncio.sleep(rng.uniform(0, 0.01))
                if rng.random() < 0.1:
                    await tx.rollback()  # leaves a permanent hole in the positions
                else:
                    await tx.commit()
                    committed.update(result.positions)

    async def tail() -> list[int]:
        seen: list[int] = []
        tailer = EventTailer(event_store.schema)
        async with event_store.pool.acquire() as conn:
            while True:
                finished = done.is_set()
                batch = await tailer.read(conn, limit=37)
                seen += [e.global_position for e in batch.events]
                if finished and not batch.events and not batch.waiting_on_gap:
                    return seen
                if not batch.events:
                    await asyncio.sleep(0.001)

    tail_task = asyncio.create_task(tail())
    await asyncio.gather(*(writer(i) for i in range(writers)))
    done.set()
    seen = await tail_task

    assert len(seen) == len(set(seen)), "an event was delivered twice"
    assert seen == sorted(seen), "events were delivered out of position order"
    assert set(seen) == committed, "the tailer missed a committed event or saw a rolled-back one"
    assert len(committed) > writers * appends_per_writer  # the run really appended (2 per commit)
