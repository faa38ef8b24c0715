"""A durable consumer in its own process, with ConsumerSpec's default ack wait.

It notes every delivery (event id, delivery attempt, pid) in ``--deliveries-file``,
duplicates included, and every handler start in ``--starts-file``. The handler records
the event in ``effects`` inside the consumer's transaction, then takes
``--handler-delay-s``: tests SIGKILL it mid-handler, or let a handler outlast the ack
wait.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

import asyncpg
from nats.aio.msg import Msg

from libs.db import connect_pool, quote_ident
from libs.eventstore import (
    ConsumerSpec,
    DeliveredEvent,
    DurableConsumer,
    EventHeaders,
    EventStore,
)
from libs.messaging import connect_nats
from tests.eventstore.events import CATALOG


async def main(args: argparse.Namespace) -> None:
    pool = await connect_pool(args.database_url, max_size=3)
    nats_client = await connect_nats(args.nats_url)
    schema = quote_ident(args.schema)
    starts, deliveries = Path(args.starts_file), Path(args.deliveries_file)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    def note(path: Path, line: str) -> None:
        with path.open("a") as log:  # a few bytes, before any await: a kill cannot tear it
            log.write(line)

    def decode(msg: Msg) -> DeliveredEvent:
        event = EventHeaders.decode(msg.headers or {}, msg.data, msg.subject)
        attempt = msg.metadata.num_delivered
        note(deliveries, f"{event.event_id} {attempt} {os.getpid()}\n")
        message = CATALOG.decode(event.event_type, event.payload)
        return DeliveredEvent(event, message, msg.subject, attempt)

    async def handle(delivered: DeliveredEvent, conn: asyncpg.Connection) -> None:
        note(starts, f"{delivered.event.event_id} {delivered.delivery_attempt} {os.getpid()}\n")
        await conn.execute(
            f"INSERT INTO {schema}.effects (event_id) VALUES ($1)", delivered.event.event_id
        )
        await asyncio.sleep(args.handler_delay_s)

    consumer = DurableConsumer(
        ConsumerSpec(args.durable, args.stream, args.subject),
        js=nats_client.jetstream(),
        store=EventStore(pool, args.schema),
        decoder=decode,
        handler=handle,
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
        "--starts-file",
        "--deliveries-file",
    ):
        parser.add_argument(option, required=True)
    parser.add_argument("--handler-delay-s", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))
