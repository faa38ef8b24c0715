"""Durable consumers against real NATS + Postgres: batches, failures, redelivery."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import pytest
from google.protobuf.wrappers_pb2 import Int64Value
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.db import apply_migrations
from libs.eventstore import (
    NO_STREAM,
    ConsumerSpec,
    DeliveredEvent,
    DurableConsumer,
    EventRelay,
    EventStore,
    RawDelivery,
    raw_decoder,
)
from libs.messaging import EventStreamNames, ensure_stream
from tests.eventstore.events import CATALOG, increment
from tests.support.infra import InfraEndpoints


async def test_a_failing_event_is_retried_alone_while_its_batch_commits(
    event_store: EventStore, db_pool: asyncpg.Pool, js: JetStreamContext, infra: InfraEndpoints
) -> None:
    names = EventStreamNames(infra.namespace, event_store.schema)
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    await event_store.append("s", [increment(v) for v in range(1, 21)], expected_version=NO_STREAM)
    consumer_schema = f"c_{uuid.uuid4().hex[:8]}"
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, consumer_schema, EventStore.migrations())
        await conn.execute(f'CREATE TABLE "{consumer_schema}".seen (value int, attempt int)')

    async def flaky(delivered: DeliveredEvent, conn: asyncpg.Connection) -> None:
        assert isinstance(delivered.message, Int64Value)
        value, attempt = delivered.message.value, delivered.delivery_attempt
        await conn.execute(f'INSERT INTO "{consumer_schema}".seen VALUES ($1, $2)', value, attempt)
        if value == 7 and attempt < 3:
            raise RuntimeError("downstream dependency hiccup")

    consumer = DurableConsumer(
        ConsumerSpec("flaky", names.stream, names.all_subjects, batch_size=20),
        js=js,
        store=EventStore(db_pool, consumer_schema),
        catalog=CATALOG,
        handler=flaky,
    )
    stop = asyncio.Event()
    relay = asyncio.create_task(EventRelay(event_store, js, names, poll_interval_s=0.1).run(stop))
    consuming = asyncio.create_task(consumer.run(stop))
    count = f'SELECT count(*) FROM "{consumer_schema}".seen'
    for _ in range(100):
        if await db_pool.fetchval(count) >= 20:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a duplicate application would land now
    stop.set()
    await asyncio.gather(relay, consuming)

    rows = await db_pool.fetch(
        f'SELECT value, attempt FROM "{consumer_schema}".seen ORDER BY value'
    )
    # Rolled-back attempts (the failing one, and its batch's first try) left no effect.
    assert [r["value"] for r in rows] == list(range(1, 21))
    assert {r["value"]: r["attempt"] for r in rows}[7] == 3


async def test_raw_business_events_are_consumed_exactly_once(
    event_store: EventStore, db_pool: asyncpg.Pool, js: JetStreamContext, infra: InfraEndpoints
) -> None:
    names = EventStreamNames(infra.namespace, f"ingest_{event_store.schema}")
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    for i in range(10):
        await js.publish(names.subject("payments"), f'{{"n": {i}}}'.encode())
    await db_pool.execute(f'CREATE TABLE "{event_store.schema}".raw_seen (n int, seq bigint)')
    failed_once: set[int] = set()

    async def record(delivery: RawDelivery, conn: asyncpg.Connection) -> None:
        n = int(delivery.data.decode().split(":")[1].rstrip("}"))
        await conn.execute(
            f'INSERT INTO "{event_store.schema}".raw_seen VALUES ($1, $2)',
            n,
            delivery.stream_sequence,
        )
        if n == 3 and n not in failed_once:
            failed_once.add(n)
            raise RuntimeError("transient")

    consumer = DurableConsumer(
        ConsumerSpec("raw", names.stream, names.all_subjects),
        js=js,
        store=event_store,
        handler=record,
        decoder=raw_decoder,
    )
    stop = asyncio.Event()
    consuming = asyncio.create_task(consumer.run(stop))
    for _ in range(100):
        if await db_pool.fetchval(f'SELECT count(*) FROM "{event_store.schema}".raw_seen') >= 10:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    stop.set()
    await consuming

    rows = await db_pool.fetch(f'SELECT n, seq FROM "{event_store.schema}".raw_seen ORDER BY n')
    assert [r["n"] for r in rows] == list(range(10))
    assert [r["seq"] for r in rows] == list(range(1, 11))


async def test_processed_records_past_their_retention_are_pruned(
    event_store: EventStore, db_pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    schema = event_store.schema
    rows = [
        ("mine", uuid.uuid4(), timedelta(days=8)),
        ("mine", uuid.uuid4(), timedelta(days=8)),
        ("mine", uuid.uuid4(), timedelta(days=30)),
        ("mine", uuid.uuid4(), timedelta(days=1)),
        ("mine", uuid.uuid4(), timedelta(0)),
        ("another", uuid.uuid4(), timedelta(days=30)),  # another consumer's records
    ]
    await db_pool.executemany(
        f'INSERT INTO "{schema}".processed_events (consumer, event_id, processed_at) '
        "VALUES ($1, $2, now() - $3::interval)",
        rows,
    )
    consumer = DurableConsumer(
        ConsumerSpec("mine", "UNUSED", "unused.>", retention=timedelta(days=7)),
        js=js,
        store=event_store,
        catalog=CATALOG,
        handler=lambda delivered, conn: asyncio.sleep(0),
    )

    assert await consumer.prune(slice_rows=2) == 3  # in slices of 2: 2, then 1

    kept = await db_pool.fetch(f'SELECT consumer, event_id FROM "{schema}".processed_events')
    assert {(r["consumer"], r["event_id"]) for r in kept} == {
        (c, e) for c, e, age in rows if c == "another" or age < timedelta(days=7)
    }


async def test_a_batch_holding_processed_events_applies_only_the_new_ones(
    event_store: EventStore, db_pool: asyncpg.Pool, js: JetStreamContext, infra: InfraEndpoints
) -> None:
    """A batch of new events, the same batch again (all processed), a mix, and a consumer
    name with quotes; a handler's own ``conn.transaction()`` is a savepoint in each."""
    names = EventStreamNames(infra.namespace, f"mix_{event_store.schema}")
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    for i in range(8):
        await js.publish(names.subject("payments"), str(i).encode())
    table = f'"{event_store.schema}".mixed_seen'
    await db_pool.execute(f"CREATE TABLE {table} (consumer text, n int)")

    def consumer_named(name: str) -> DurableConsumer[RawDelivery]:
        async def record(delivery: RawDelivery, conn: asyncpg.Connection) -> None:
            async with conn.transaction():  # nested: a savepoint inside the batch's
                await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", name, int(delivery.data))

        return DurableConsumer(
            ConsumerSpec(name, names.stream, names.all_subjects),
            js=js,
            store=event_store,
            handler=record,
            decoder=raw_decoder,
        )

    fetches = 0

    async def deliveries(first: int, last: int) -> list[Msg]:
        """Stream messages first..last (0-based), as a fresh delivery each time."""
        nonlocal fetches
        fetches += 1
        subscription = await js.pull_subscribe(
            names.all_subjects, durable=f"reader{fetches}", stream=names.stream
        )
        messages = await subscription.fetch(8, timeout=5)
        assert len(messages) == 8
        return messages[first : last + 1]

    for name in ("plain_name", "name with 'quotes'"):
        consumer = consumer_named(name)
        async with db_pool.acquire() as conn:
            await consumer.handle_batch(await deliveries(0, 2), conn)  # all new
            await consumer.handle_batch(await deliveries(0, 2), conn)  # all processed
            await consumer.handle_batch(await deliveries(1, 7), conn)  # 2 processed, 5 new
            assert not conn.is_in_transaction()
        rows = await db_pool.fetch(f"SELECT n FROM {table} WHERE consumer = $1 ORDER BY n", name)
        assert [r["n"] for r in rows] == list(range(8))


async def test_a_consumer_refuses_a_pool_that_cannot_open_its_batches(
    database_url: str, js: JetStreamContext, unique_name: str
) -> None:
    """A plain asyncpg pool would fail each batch (no one-round-trip transaction there), so
    every message would be retried into the dead letters: refused at construction."""
    plain = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        with pytest.raises(TypeError, match=r"libs\.db\.connect_pool"):
            DurableConsumer(
                ConsumerSpec("plain", "stream", "subject.>"),
                js=js,
                store=EventStore(plain, unique_name),
                handler=lambda delivered, conn: asyncio.sleep(0),
                catalog=CATALOG,
            )
    finally:
        await plain.close()
