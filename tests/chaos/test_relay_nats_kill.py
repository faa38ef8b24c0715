"""NATS SIGKILLed while the relay waits for JetStream acks: the relay resumes by itself,
and the public stream holds every event once, in position order, however long the stall.

Each test runs its own nats-server (never the machine's shared one), kills it with
SIGKILL at a moment the relay has publishes in flight, restarts it on the same store
and port, and keeps appending throughout. The relay runs in this process and is never
restarted, except where a test restarts it on purpose from a stale checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from libs.db import quote_ident
from libs.eventstore import NO_STREAM, EventRelay, EventStore
from libs.messaging import EventStreamNames, connect_nats, ensure_stream
from tests.chaos.private_nats import PrivateNats
from tests.eventstore.events import note

pytestmark = pytest.mark.slow

_ACK_TIMEOUT_S = 2.0
_ALL_PUBLISHED_WITHIN_S = 60.0


@pytest_asyncio.fixture(loop_scope="session")
async def private_nats(tmp_path: Path) -> AsyncIterator[PrivateNats]:
    server = PrivateNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def _client(url: str, name: str) -> AsyncIterator[NatsClient]:
    client = await connect_nats(url, name=name)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.close()


class _Writer:
    """Appends bursts of events until stopped, remembering what committed."""

    def __init__(self, store: EventStore, seed: int) -> None:
        self._store = store
        self._rng = random.Random(seed)
        self.appended: list[UUID] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write())

    async def stop(self) -> None:
        """Stop writing (again: a no-op) and wait for the append in progress."""
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _write(self) -> None:
        n = 0
        while not self._stop.is_set():
            for _ in range(2):
                size = self._rng.randint(10, 40)
                result = await self._store.append(
                    f"w{n}", [note(str(n + i)) for i in range(size)], expected_version=NO_STREAM
                )
                self.appended.extend(e.event_id for e in result.events)
                n += size
            await asyncio.sleep(0.05)


async def _kill_with_acks_outstanding(
    server: PrivateNats, relay: EventRelay, down_s: float
) -> bool:
    """SIGKILL NATS the moment the relay has publishes in flight; restart it after
    ``down_s``. True when acks were lost (still unresolved after the server died)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while relay.in_flight == 0:
        if loop.time() > deadline:
            raise TimeoutError("the relay never had a publish in flight")
        await asyncio.sleep(0.0005)
    await server.sigkill()
    await asyncio.sleep(0.3)  # whatever the dead server had acknowledged has arrived by now
    lost = relay.in_flight > 0
    await asyncio.sleep(max(down_s - 0.3, 0.0))
    await server.start()
    return lost


async def _wait_until_published(js: JetStreamContext, stream: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _ALL_PUBLISHED_WITHIN_S
    while True:
        with contextlib.suppress(Exception):  # reconnecting
            if (await js.stream_info(stream)).state.messages >= count:
                break
        if loop.time() > deadline:
            raise AssertionError(
                f"the stream does not hold all {count} appended events "
                f"{_ALL_PUBLISHED_WITHIN_S:g}s after the last kill: the relay is stuck"
            )
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # anything extra (a duplicate) would land now


async def _stream_contents(js: JetStreamContext, names: EventStreamNames) -> list[tuple[int, UUID]]:
    """(Lathe-Position, event id) of every message in the stream, in stream order."""
    subscription = await js.pull_subscribe(
        names.all_subjects,
        durable=f"check{uuid4().hex[:8]}",
        stream=names.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE),
    )
    total = (await js.stream_info(names.stream)).state.messages
    received: list[tuple[int, UUID]] = []
    while len(received) < total:
        for message in await subscription.fetch(500, timeout=5):
            headers = message.headers or {}
            received.append((int(headers["Lathe-Position"]), UUID(headers["Nats-Msg-Id"])))
    await subscription.unsubscribe()
    return received


def _assert_exactly_once_in_order(received: list[tuple[int, UUID]], appended: list[UUID]) -> None:
    ids = [event_id for _, event_id in received]
    duplicates = len(ids) - len(set(ids))
    assert duplicates == 0, f"{duplicates} events are in the stream more than once"
    assert set(ids) == set(appended), (
        f"{len(set(appended) - set(ids))} appended events never reached the stream"
    )
    positions = [position for position, _ in received]
    backwards = sum(1 for a, b in itertools.pairwise(positions) if b <= a)
    assert backwards == 0, f"positions go backwards {backwards} times in the stream"


async def test_relay_resumes_after_nats_is_killed_with_acks_outstanding(
    event_store: EventStore, private_nats: PrivateNats
) -> None:
    names = EventStreamNames("chaos", event_store.schema)
    async with (
        _client(private_nats.url, "relay") as relay_client,
        _client(private_nats.url, "checker") as checker,
    ):
        js, relay_js = checker.jetstream(), relay_client.jetstream()
        await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
        relay = EventRelay(
            event_store,
            relay_js,
            names,
            batch_size=100,
            poll_interval_s=0.2,
            ack_timeout_s=_ACK_TIMEOUT_S,
        )
        stop = asyncio.Event()
        relaying = asyncio.create_task(relay.run(stop))
        writer = _Writer(event_store, seed=3)
        writer.start()
        kills = kills_losing_acks = 0
        try:
            while kills < 3 or (kills_losing_acks == 0 and kills < 10):
                await asyncio.sleep(1.0)  # let the relay lead and publish again
                kills += 1
                kills_losing_acks += await _kill_with_acks_outstanding(
                    private_nats, relay, down_s=0.5
                )
            await asyncio.sleep(2.0)  # appends go on while the relay recovers
            await writer.stop()
            await _wait_until_published(js, names.stream, len(writer.appended))
            assert not relaying.done(), "the relay task ended: it did not resume by itself"
            received = await _stream_contents(js, names)
        finally:
            stop.set()
            await asyncio.wait_for(relaying, 30)

    assert kills_losing_acks > 0, "no kill left the relay with acks that never came"
    _assert_exactly_once_in_order(received, writer.appended)
    assert relay.stalled_for_s() < 5, "the relay was not healthy at the end"


async def test_a_stall_past_the_duplicate_window_publishes_nothing_twice(
    event_store: EventStore, db_pool: asyncpg.Pool, private_nats: PrivateNats
) -> None:
    """JetStream's dedupe window (0.5 s here) is long over when the relay publishes again."""
    names = EventStreamNames("chaos", event_store.schema)
    async with (
        _client(private_nats.url, "relay") as relay_client,
        _client(private_nats.url, "checker") as checker,
    ):
        js, relay_js = checker.jetstream(), relay_client.jetstream()
        await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=0.5)

        def new_relay() -> EventRelay:
            return EventRelay(
                event_store,
                relay_js,
                names,
                batch_size=100,
                poll_interval_s=0.2,
                ack_timeout_s=_ACK_TIMEOUT_S,
            )

        writer = _Writer(event_store, seed=5)
        writer.start()
        stop = asyncio.Event()
        relay = new_relay()
        relaying = asyncio.create_task(relay.run(stop))
        try:
            lost = False
            for _ in range(8):
                await asyncio.sleep(1.0)
                # Down for 3 s: the relay's stall (ack timeout, then NATS unreachable)
                # outlasts the duplicate window several times over.
                if await _kill_with_acks_outstanding(private_nats, relay, down_s=3.0):
                    lost = True
                    break
            assert lost, "no kill left the relay with acks that never came"
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.wait_for(relaying, 30)

            # A relay that crashed before storing its checkpoint starts again far behind
            # what the stream holds (here: halfway), long after the duplicate window.
            checkpoints = f"{quote_ident(event_store.schema)}.checkpoints"
            await db_pool.execute(
                f"UPDATE {checkpoints} SET position = position / 2 WHERE name = 'relay'"
            )
            await asyncio.sleep(1.0)
            stop = asyncio.Event()
            relaying = asyncio.create_task(new_relay().run(stop))
            await asyncio.sleep(2.0)
            await writer.stop()
            await _wait_until_published(js, names.stream, len(writer.appended))
            received = await _stream_contents(js, names)
        finally:
            await writer.stop()
            stop.set()
            await asyncio.wait_for(relaying, 30)

    _assert_exactly_once_in_order(received, writer.appended)
