"""A relay in its own process, for tests that SIGKILL it mid-batch."""

from __future__ import annotations

import argparse
import asyncio
import signal

from libs.db import connect_pool
from libs.eventstore import EventRelay, EventStore
from libs.messaging import EventStreamNames, connect_nats


async def main(args: argparse.Namespace) -> None:
    pool = await connect_pool(args.database_url, max_size=3)
    nats_client = await connect_nats(args.nats_url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    relay = EventRelay(
        EventStore(pool, args.schema),
        nats_client.jetstream(),
        EventStreamNames(args.namespace, args.schema),
        batch_size=args.batch_size,
        poll_interval_s=0.2,
    )
    await relay.run(stop)
    await nats_client.drain()
    await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for option in ("--database-url", "--nats-url", "--schema", "--namespace"):
        parser.add_argument(option, required=True)
    parser.add_argument("--batch-size", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
