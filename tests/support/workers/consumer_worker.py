"""A durable consumer in its own process whose handler is slow and not idempotent.

Its effect adds each event's value to a running total, so an event applied
twice shows up in the total; tests SIGKILL this process mid-handler.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import asyncpg
from google.protobuf.wrappers_pb2 import Int64Value

from libs.db import connect_pool, quote_ident
from libs.eventstore import ConsumerSpec, DeliveredEvent, DurableConsumer, EventStore
from libs.messaging import connect_nats
from tests.eventstore.events import CATALOG


async def main(args: argparse.Namespace) -> None:
    pool = await connect_pool(args.database_url, max_size=3)
    nats_client = await connect_nats(args.nats_url)
    schema = quote_ident(args.schema)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def add_to_total(delivered: DeliveredEvent, conn: asyncpg.Connection) -> None:
        assert isinstance(delivered.message, Int64Value)
        await conn.execute(
            f"UPDATE {schema}.tally SET total = total + $1, applied = applied + 1",
            delivered.message.value,
        )
        await conn.execute(
            f"INSERT INTO {schema}.effects (event_id) VALUES ($1)", delivered.event.event_id
        )
        await asyncio.sleep(args.handler_delay_s)  # a kill now lands mid-handler

    consumer = DurableConsumer(
        ConsumerSpec(args.durable, args.stream, args.subject, batch_size=10, ack_wait_s=1.0),
        js=nats_client.jetstream(),
        store=EventStore(pool, args.schema),
        catalog=CATALOG,
        handler=add_to_total,
    )
    await consumer.run(stop)
    await nats_client.drain()
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in (
        "--database-url",
        "--nats-url",
        "--schema",
        "--stream",
        "--subject",
        "--durable",
    ):
        parser.add_argument(option, required=True)
    parser.add_argument("--handler-delay-s", type=float, default=0.005)
    asyncio.run(main(parser.parse_args()))
