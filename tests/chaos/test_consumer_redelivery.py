"""A consumer process SIGKILLed mid-handler: its event is redelivered seconds later (not
after a 30 s ack wait) and applied once; a handler slower than the ack wait is not
redelivered meanwhile (in-progress signals), with ConsumerSpec's defaults throughout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from libs.db import apply_migrations
from libs.eventstore import NO_STREAM, EventRelay, EventStore
from libs.messaging import EventStreamNames, ensure_stream
from tests.eventstore.events import increment
from tests.support.infra import InfraEndpoints
from tests.support.subprocesses import sigkill, sigterm, start_worker

pytestmark = pytest.mark.slow

_DURABLE = "slow-handler"


async def _until(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what}")
        await asyncio.sleep(0.05)


def _noted(path: Path, event_id: UUID) -> list[tuple[int, int]]:
    """(delivery attempt, pid) of every delivery or handler start noted for ``event_id``."""
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [(int(attempt), int(pid)) for eid, attempt, pid in lines if eid == str(event_id)]


async def test_a_killed_consumer_gets_its_event_back_within_seconds_and_applies_it_once(
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    js: JetStreamContext,
    infra: InfraEndpoints,
    database_url: str,
    tmp_path: Path,
) -> None:
    names = EventStreamNames(infra.namespace, event_store.schema)
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    consumer_schema = f"{event_store.schema}_r"
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, consumer_schema, EventStore.migrations())
        await conn.execute(f'CREATE TABLE "{consumer_schema}".effects (event_id uuid NOT NULL)')
    # The durable consumer as an older release created it: a 30 s ack wait.
    await js.add_consumer(
        names.stream,
        ConsumerConfig(
            durable_name=_DURABLE,
            deliver_group=_DURABLE,
            deliver_subject=f"_deliver.{uuid.uuid4().hex}",
            filter_subject=names.all_subjects,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            max_deliver=20,
            max_ack_pending=1000,
        ),
    )
    stop_relay = asyncio.Event()
    relaying = asyncio.create_task(
        EventRelay(event_store, js, names, poll_interval_s=0.2).run(stop_relay)
    )
    starts, deliveries = tmp_path / "starts.txt", tmp_path / "deliveries.txt"
    worker_args = (
        "--database-url",
        database_url,
        "--nats-url",
        infra.nats_url,
        "--schema",
        consumer_schema,
        "--stream",
        names.stream,
        "--subject",
        names.all_subjects,
        "--durable",
        _DURABLE,
        "--starts-file",
        str(starts),
        "--deliveries-file",
        str(deliveries),
    )

    async def applied(event_id: UUID) -> int:
        return int(
            await db_pool.fetchval(
                f'SELECT count(*) FROM "{consumer_schema}".effects WHERE event_id = $1', event_id
            )
        )

    async def append_one(stream_id: str) -> UUID:
        result = await event_store.append(stream_id, [increment(1)], expected_version=NO_STREAM)
        return result.events[0].event_id

    log = tmp_path / "consumer.log"
    worker = await start_worker(
        "tests.chaos.consumer_worker", *worker_args, "--handler-delay-s", "8", log_path=log
    )
    try:
        # A handler busy for 8 s, longer than the 5 s ack wait: not redelivered meanwhile.
        slow = await append_one("slow")
        await _until(lambda: _at_least(applied(slow), 1), 40, "the slow event applied")
        await asyncio.sleep(1.0)
        assert [attempt for attempt, _ in _noted(deliveries, slow)] == [1], (
            "the event was redelivered while its handler was still running"
        )

        # Killed mid-handler, restarted at once: the event comes back within seconds.
        killed = await append_one("killed")
        await _until(lambda: _now(bool(_noted(starts, killed))), 20, "handler started")
        await sigkill(worker)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        worker = await start_worker(
            "tests.chaos.consumer_worker", *worker_args, "--handler-delay-s", "0", log_path=log
        )
        await _until(
            lambda: _at_least(applied(killed), 1), 25, "the killed handler's event redelivered"
        )
        redelivered_after_s = loop.time() - killed_at
        await asyncio.sleep(1.5)  # a second redelivery would be applied now
        assert await sigterm(worker) == 0
    finally:
        await sigkill(worker)
        stop_relay.set()
        await relaying

    # Within the 5 s ack wait after the last in-progress signal (or the new process's
    # start, if slower); the old 30 s ack wait would take twice this.
    assert redelivered_after_s < 15, f"redelivered {redelivered_after_s:.1f}s after the kill"
    assert await applied(slow) == 1
    assert await applied(killed) == 1, "the killed handler's effect was applied twice or lost"
    attempts = _noted(starts, killed)
    assert [attempt for attempt, _ in attempts] == [1, 2]
    assert attempts[0][1] != attempts[1][1], "the retry ran in the restarted process"
    info = await js.consumer_info(names.stream, _DURABLE)
    assert info.config.ack_wait == 5.0, "the old consumer kept its 30 s ack wait"


async def _at_least(count: Awaitable[int], expected: int) -> bool:
    return await count >= expected


async def _now(value: bool) -> bool:
    return value
