"""Killing the relay or a consumer at any moment loses nothing and duplicates nothing.

Both run as real OS processes against real Postgres and NATS and are SIGKILLed
repeatedly while events flow.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from libs.db import apply_migrations
from libs.eventstore import NO_STREAM, EventRelay, EventStore
from libs.messaging import EventStreamNames, ensure_stream
from tests.eventstore.events import increment, note
from tests.support.infra import InfraEndpoints
from tests.support.subprocesses import sigkill, sigterm, start_worker

pytestmark = pytest.mark.slow


async def _broker_position(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return 0
    last = await js.get_msg(stream, info.state.last_seq)
    return int(last.headers["Lathe-Position"])


async def _wait_for(condition, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(0.05)


async def test_relay_killed_mid_batch_publishes_every_event_exactly_once(
    event_store: EventStore,
    js: JetStreamContext,
    infra: InfraEndpoints,
    database_url: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    names = EventStreamNames(infra.namespace, event_store.schema)
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    appended: list[UUID] = []

    killing_done = asyncio.Event()

    async def write(at_least: int) -> None:
        # Bursts keep the relay busy over many batches, so kills land mid-publish; they go
        # on until the kills are done (a relay that has caught up gives a kill no window).
        n = 0
        while n < at_least or not killing_done.is_set():
            for _ in range(60):
                size = rng.randint(1, 5)
                result = await event_store.append(
                    f"s{n}", [note(str(n + i)) for i in range(size)], expected_version=NO_STREAM
                )
                appended.extend(e.event_id for e in result.events)
                n += size
            await asyncio.sleep(0.02)

    worker_args = (
        "--database-url",
        database_url,
        "--nats-url",
        infra.nats_url,
        "--schema",
        event_store.schema,
        "--namespace",
        infra.namespace,
        "--batch-size",
        "25",
    )
    writing = asyncio.create_task(write(6000))
    kills, kills_with_broker_ahead = 0, 0
    while kills < 3 or (kills_with_broker_ahead == 0 and kills < 12):
        before = await _broker_position(js, names.stream)
        relay = await start_worker(
            "tests.support.workers.relay_worker", *worker_args, log_path=tmp_path / "relay.log"
        )

        async def publishing(before: int = before) -> bool:
            return await _broker_position(js, names.stream) > before

        # Kill once it publishes (its start-up can take over a second on a busy machine).
        await _wait_for(publishing)
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        await sigkill(relay)
        kills += 1
        checkpoint = await event_store.load_checkpoint("relay")
        if await _broker_position(js, names.stream) > checkpoint:
            kills_with_broker_ahead += 1  # published, then killed before the checkpoint
    killing_done.set()
    await writing

    relay = await start_worker(
        "tests.support.workers.relay_worker", *worker_args, log_path=tmp_path / "relay.log"
    )

    async def all_published() -> bool:
        return (await js.stream_info(names.stream)).state.messages >= len(appended)

    await _wait_for(all_published)
    await asyncio.sleep(0.5)  # anything extra (a duplicate) would land now
    assert await sigterm(relay) == 0

    subscription = await js.pull_subscribe(
        names.all_subjects,
        durable="downstream",
        stream=names.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    received: list[tuple[int, UUID]] = []
    while len(received) < len(appended) + 1:
        try:
            batch = await subscription.fetch(500, timeout=1)
        except TimeoutError:
            break
        for message in batch:
            received.append(
                (int(message.headers["Lathe-Position"]), UUID(message.headers["Nats-Msg-Id"]))
            )
            await message.ack()

    ids = [event_id for _, event_id in received]
    assert kills_with_broker_ahead > 0, "no kill landed between publish and checkpoint"
    assert len(ids) == len(set(ids)), "the downstream consumer saw an event twice"
    assert set(ids) == set(appended), "an appended event never reached the downstream consumer"
    positions = [position for position, _ in received]
    assert positions == sorted(positions)


async def test_consumer_killed_mid_handler_applies_each_effect_once(
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    js: JetStreamContext,
    infra: InfraEndpoints,
    database_url: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    names = EventStreamNames(infra.namespace, event_store.schema)
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    values = [rng.randint(1, 1000) for _ in range(400)]
    for i in range(0, len(values), 10):
        await event_store.append(
            f"c{i}", [increment(v) for v in values[i : i + 10]], expected_version=NO_STREAM
        )
    stop_relay = asyncio.Event()
    relay = EventRelay(event_store, js, names, poll_interval_s=0.2)
    relaying = asyncio.create_task(relay.run(stop_relay))

    consumer_schema = f"{event_store.schema}_c"
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, consumer_schema, EventStore.migrations())
        await conn.execute(
            f'CREATE TABLE "{consumer_schema}".tally (total bigint NOT NULL, applied int NOT NULL);'
            f'INSERT INTO "{consumer_schema}".tally VALUES (0, 0);'
            f'CREATE TABLE "{consumer_schema}".effects (event_id uuid NOT NULL)'
        )
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
        "tally",
    )

    for _ in range(4):
        worker = await start_worker(
            "tests.support.workers.consumer_worker",
            *worker_args,
            log_path=tmp_path / "consumer.log",
        )
        await asyncio.sleep(rng.uniform(0.4, 1.0))
        await sigkill(worker)
    worker = await start_worker(
        "tests.support.workers.consumer_worker", *worker_args, log_path=tmp_path / "consumer.log"
    )

    async def all_applied() -> bool:
        return await db_pool.fetchval(f'SELECT applied FROM "{consumer_schema}".tally') >= len(
            values
        )

    await _wait_for(all_applied, timeout_s=60)
    await asyncio.sleep(1.5)  # past ack_wait: a redelivered duplicate would be applied now
    assert await sigterm(worker) == 0
    stop_relay.set()
    await relaying

    total, applied = await db_pool.fetchrow(f'SELECT total, applied FROM "{consumer_schema}".tally')
    effects = await db_pool.fetchval(
        f'SELECT count(DISTINCT event_id) FROM "{consumer_schema}".effects'
    )
    assert applied == len(values), "an effect was applied more than once (or lost)"
    assert effects == len(values)
    assert total == sum(values)
