"""A Postgres outage longer than max_deliver redeliveries dead-letters nothing."""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

import asyncpg
from nats.js import JetStreamContext

from libs.db import connect_pool
from libs.eventstore import ConsumerSpec, DurableConsumer, EventStore, RawDelivery, raw_decoder
from libs.messaging import EventStreamNames, ensure_stream
from tests.support.infra import InfraEndpoints
from tests.support.tcp_proxy import cuttable_link


async def _count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def _until(pool: asyncpg.Pool, table: str, count: int, within_s: float) -> None:
    for _ in range(int(within_s / 0.1)):
        if await _count(pool, table) >= count:
            return
        await asyncio.sleep(0.1)


async def test_messages_wait_out_a_postgres_outage_instead_of_dead_lettering(
    event_store: EventStore,
    db_pool: asyncpg.Pool,
    database_url: str,
    js: JetStreamContext,
    infra: InfraEndpoints,
) -> None:
    names = EventStreamNames(infra.namespace, f"outage_{event_store.schema}")
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    table = f'"{event_store.schema}".applied'
    await db_pool.execute(f"CREATE TABLE {table} (n int PRIMARY KEY)")

    async def apply(delivery: RawDelivery, conn: asyncpg.Connection) -> None:
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", int(delivery.data))

    server = urlparse(database_url)
    async with cuttable_link(server.hostname or "127.0.0.1", server.port or 5432) as link:
        proxied = server._replace(netloc=f"{server.username}@127.0.0.1:{link.port}").geturl()
        pool = await connect_pool(proxied, max_size=2)
        # Two deliveries at most, one second apart: without waiting out the outage every
        # message would be dead-lettered within seconds.
        consumer = DurableConsumer(
            ConsumerSpec("outage", names.stream, names.all_subjects, ack_wait_s=1.0, max_deliver=2),
            js=js,
            store=EventStore(pool, event_store.schema),
            handler=apply,
            decoder=raw_decoder,
        )
        stop = asyncio.Event()
        consuming = asyncio.create_task(consumer.run(stop))
        try:
            for n in range(5):
                await js.publish(names.subject("payments"), str(n).encode())
            await _until(db_pool, table, 5, within_s=10)
            assert await _count(db_pool, table) == 5

            await link.cut()
            for n in range(5, 10):
                await js.publish(names.subject("payments"), str(n).encode())
            await asyncio.sleep(6)  # several ack_waits: redeliveries would exhaust max_deliver
            assert await _count(db_pool, table) == 5

            await link.restore()
            await _until(db_pool, table, 10, within_s=30)
        finally:
            stop.set()
            await consuming
            await pool.close()

    rows = await db_pool.fetch(f"SELECT n FROM {table} ORDER BY n")
    assert [r["n"] for r in rows] == list(range(10))
