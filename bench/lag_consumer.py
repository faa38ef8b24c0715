"""The downstream side of the lag benchmark: JetStream consumers that timestamp receipt.

Runs either as a task in the benchmark's process or, by default, as its own
process (``python -m bench.lag_consumer``), the way a downstream service
consumes another service's events. Receipt times are ``time.monotonic_ns()``,
CLOCK_MONOTONIC, one clock for every process on the machine, so they compare
directly with the producer's send times.

The benchmark starts them with ``running_consumers``. Protocol of the process
form: one JSON ``ConsumerPlan`` line on stdin; ``READY`` on stdout once the
consumers exist; then, when every consumer has seen ``expected`` messages or
``stop`` arrives on stdin, one JSON line of receipts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bench.events import CATALOG
from bench.harness import frozen_heap
from libs.db import connect_pool
from libs.eventstore import ConsumerSpec, DeliveredEvent, DurableConsumer, EventStore
from libs.eventstore.headers import MSG_ID
from libs.messaging import connect_nats

READY = "READY"
STOP = "stop"
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ConsumerPlan:
    """What to consume and where; JSON-serializable for the process form."""

    nats_url: str
    stream: str
    filter_subject: str
    expected: int
    """Messages each consumer must see before the run is complete."""
    plain_durable: str
    """Durable name of the plain nats-py pull consumer (always run)."""
    lathe_durable: str | None = None
    """When set, also run Lathe's ``DurableConsumer`` under this name..."""
    database_url: str | None = None
    lathe_schema: str | None = None
    """...recording processed events in this (already migrated) schema."""
    fetch_batch: int = 64
    fetch_timeout_s: float = 0.5
    gc_freeze: bool = False
    """gc.freeze() once the consumers exist, as ``ServiceHost`` does after start-up."""


@dataclass
class Receipts:
    """Message id (``Nats-Msg-Id``, the event id) -> monotonic ns of receipt, per consumer."""

    plain: dict[str, int] = field(default_factory=dict)
    lathe: dict[str, int] = field(default_factory=dict)
    plain_stages: dict[str, list[int]] = field(default_factory=dict)
    """Per message, monotonic ns: [stored by JetStream, fetch returned, ack sent]."""
    lathe_stages: dict[str, list[int]] = field(default_factory=dict)
    """Per message, monotonic ns: [stored by JetStream, delivered to the process, its
    batch taken up, handler called, batch committed and acked]."""
    cpu_s: float = 0.0
    """CPU time this process spent from ready to done (meaningful in the process form)."""
    wall_s: float = 0.0


async def consume(
    plan: ConsumerPlan, *, ready: Callable[[], None], stop: asyncio.Event
) -> Receipts:
    """Run the plan's consumers until each saw ``expected`` messages or ``stop`` is set."""
    receipts = Receipts()
    done = asyncio.Event()
    client = await connect_nats(plan.nats_url, name="lathe-bench-consumer")
    pool = None
    try:
        js = client.jetstream()
        wanted = [receipts.plain] + ([receipts.lathe] if plan.lathe_durable else [])

        def check_done() -> None:
            if all(len(r) >= plan.expected for r in wanted):
                done.set()

        tasks = [
            asyncio.create_task(
                _plain(js, plan, receipts.plain, receipts.plain_stages, check_done, done)
            )
        ]
        if plan.lathe_durable:
            assert plan.database_url and plan.lathe_schema, "DurableConsumer needs a database"
            pool = await connect_pool(plan.database_url, max_size=4, application_name="bench")
            store = EventStore(pool, plan.lathe_schema)

            async def handler(delivered: DeliveredEvent, _conn: object) -> None:
                # Receipt = the handler runs (inside the consumer's transaction). A
                # redelivery keeps the first receipt.
                receipts.lathe.setdefault(str(delivered.event.event_id), time.monotonic_ns())
                check_done()

            consumer = _TimedConsumer(
                receipts.lathe_stages,
                ConsumerSpec(plan.lathe_durable, plan.stream, plan.filter_subject),
                js=js,
                store=store,
                catalog=CATALOG,
                handler=handler,
            )
            tasks.append(asyncio.create_task(consumer.run(done)))
            await _wait_for_consumer(js, plan.stream, plan.lathe_durable)
        await _wait_for_consumer(js, plan.stream, plan.plain_durable)
        with frozen_heap(plan.gc_freeze):
            ready()
            cpu, wall = time.process_time(), time.monotonic()
            waiters = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        receipts.cpu_s = time.process_time() - cpu
        receipts.wall_s = time.monotonic() - wall
        for waiter in waiters:
            waiter.cancel()
        done.set()
        await asyncio.gather(*tasks)
    finally:
        if pool is not None:
            await pool.close()
        await client.close()
    return receipts


async def _plain(
    js: JetStreamContext,
    plan: ConsumerPlan,
    receipts: dict[str, int],
    stages: dict[str, list[int]],
    check_done: Callable[[], None],
    done: asyncio.Event,
) -> None:
    """The building block: a pull consumer that fetches, timestamps and acks."""
    subscription = await js.pull_subscribe(
        plan.filter_subject,
        durable=plan.plain_durable,
        stream=plan.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
    )
    try:
        while not done.is_set():
            try:
                messages = await subscription.fetch(plan.fetch_batch, timeout=plan.fetch_timeout_s)
            except TimeoutError:
                continue
            fetched = time.monotonic_ns()
            for message in messages:
                event_id = (message.headers or {})[MSG_ID]
                receipts.setdefault(event_id, fetched)
                await message.ack()
                stages.setdefault(event_id, [stored_ns(message), fetched, time.monotonic_ns()])
            check_done()
    finally:
        await subscription.unsubscribe()


_WALL_MINUS_MONOTONIC_NS = time.time_ns() - time.monotonic_ns()


def stored_ns(msg: Msg) -> int:
    """When JetStream stored ``msg`` (its ack subject's timestamp, the server's wall
    clock on this machine), as CLOCK_MONOTONIC ns like every other timestamp here."""
    return round(msg.metadata.timestamp.timestamp() * 1e9) - _WALL_MINUS_MONOTONIC_NS


class _TimedConsumer(DurableConsumer[DeliveredEvent]):
    """Lathe's DurableConsumer, unchanged, with each batch's start and end timed."""

    def __init__(self, stages: dict[str, list[int]], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stages = stages

    async def handle_batch(self, messages: list[Msg], conn: asyncpg.Connection) -> None:
        started = time.monotonic_ns()
        rows = []
        for msg in messages:
            delivered = self.delivered_at(msg)
            delivered_ns = round(delivered * 1e9) if delivered is not None else started
            rows.append(((msg.headers or {})[MSG_ID], [stored_ns(msg), delivered_ns, started]))
        await super().handle_batch(messages, conn)
        done = time.monotonic_ns()
        for event_id, row in rows:
            self._stages.setdefault(event_id, [*row, 0, done])


async def _wait_for_consumer(js: JetStreamContext, stream: str, durable: str) -> None:
    for _ in range(500):
        with contextlib.suppress(NotFoundError):
            await js.consumer_info(stream, durable)
            return
        await asyncio.sleep(0.01)
    raise RuntimeError(f"consumer {durable} on {stream} never appeared")


@contextlib.asynccontextmanager
async def running_consumers(
    plan: ConsumerPlan, *, in_process: bool
) -> AsyncIterator[ConsumerRunner]:
    """Start the plan's consumers (here, or in their own process); stop them on exit."""
    runner: ConsumerRunner = _InProcess(plan) if in_process else _Subprocess(plan)
    try:
        await runner.start()
        yield runner
    finally:
        await runner.close()


class ConsumerRunner:
    """The consumers of one run, wherever they execute."""

    async def start(self) -> None:
        """Return once every consumer exists on the server (nothing sent can be missed)."""
        raise NotImplementedError

    async def finish(self, timeout_s: float) -> Receipts:
        """Receipts once every consumer saw everything, or what arrived by the timeout."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _InProcess(ConsumerRunner):
    def __init__(self, plan: ConsumerPlan) -> None:
        self._plan = plan
        self._stop = asyncio.Event()
        self._task: asyncio.Task[Receipts] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(consume(self._plan, ready=ready.set, stop=self._stop))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait([waiter, self._task], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            waiter.cancel()
            self._task.result()  # raises the failure

    async def finish(self, timeout_s: float) -> Receipts:
        assert self._task is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        self._stop.set()
        return await self._task

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None and not self._task.done():
            await asyncio.wait_for(self._task, 30)


class _Subprocess(ConsumerRunner):
    """The consumers in their own interpreter: ``python -m bench.lag_consumer``."""

    def __init__(self, plan: ConsumerPlan) -> None:
        self._plan = plan
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.lag_consumer",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=_REPO_ROOT,
            limit=1 << 28,
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(asdict(self._plan)).encode() + b"\n")
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if line.decode().strip() != READY:
            raise RuntimeError(f"lag consumer process did not start (said {line!r}); see stderr")

    async def finish(self, timeout_s: float) -> Receipts:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
        except TimeoutError:
            process.stdin.write(f"{STOP}\n".encode())
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), 60)
        process.stdin.close()
        await process.wait()
        if not line:
            raise RuntimeError("lag consumer process exited without results; see stderr")
        return Receipts(**json.loads(line))

    async def close(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    plan = ConsumerPlan(**json.loads(await reader.readline()))
    stop = asyncio.Event()

    async def watch_stdin() -> None:
        while line := await reader.readline():
            if line.strip() == STOP.encode():
                break
        stop.set()  # stop, or the benchmark went away (EOF)

    watcher = asyncio.create_task(watch_stdin())
    receipts = await consume(plan, ready=lambda: print(READY, flush=True), stop=stop)
    watcher.cancel()
    print(json.dumps(asdict(receipts)), flush=True)


if __name__ == "__main__":
    asyncio.run(_main())
