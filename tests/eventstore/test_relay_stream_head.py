"""The relay continues after what the stream holds, not only after its checkpoint."""

from __future__ import annotations

import asyncio
import itertools
from uuid import UUID

import asyncpg
from nats.js import JetStreamContext

from libs.db import quote_ident
from libs.eventstore import NO_STREAM, EventRelay, EventStore, EventTailer
from libs.eventstore.publisher import OrderedPublisher, PublishFailed, read_stream_head
from libs.messaging import EventStreamNames, ensure_stream
from tests.eventstore.events import note
from tests.support.infra import InfraEndpoints


async def _contents(js: JetStreamContext, stream: str) -> list[dict[str, str]]:
    """Headers of every message in the stream, in stream order."""
    state = (await js.stream_info(stream)).state
    return [
        dict((await js.get_msg(stream, seq)).headers or {})
        for seq in range(state.first_seq, state.last_seq + 1)
    ]


async def _until_messages(js: JetStreamContext, stream: str, count: int) -> None:
    for _ in range(200):
        if (await js.stream_info(stream)).state.messages >= count:
            await asyncio.sleep(0.3)  # anything extra would land now
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the stream never held {count} messages")


async def _append(store: EventStore, prefix: str, count: int) -> list[UUID]:
    ids: list[UUID] = []
    for i in range(count):
        result = await store.append(f"{prefix}{i}", [note(str(i))], expected_version=NO_STREAM)
        ids.extend(e.event_id for e in result.events)
    return ids


async def test_a_stale_checkpoint_and_a_foreign_message_neither_duplicate_nor_reorder(
    event_store: EventStore, db_pool: asyncpg.Pool, js: JetStreamContext, infra: InfraEndpoints
) -> None:
    names = EventStreamNames(infra.namespace, event_store.schema)
    # JetStream's own dedupe would hide a republished event for 0.5 s only.
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=0.5)
    head = await read_stream_head(js, names.stream)
    assert (head.last_sequence, head.position) == (0, 0)
    stop = asyncio.Event()
    relay = EventRelay(event_store, js, names, poll_interval_s=0.1)
    relaying = asyncio.create_task(relay.run(stop))
    try:
        appended = await _append(event_store, "a", 30)
        await _until_messages(js, names.stream, 30)
    finally:
        stop.set()
        await relaying

    # Someone publishes into the service's stream by hand, and the relay's checkpoint is
    # lost (set back to the start): the next relay must neither republish the 30 events
    # nor choke on the foreign message.
    await js.publish(names.subject("manual.note"), b"not a Lathe event")
    head = await read_stream_head(js, names.stream)
    assert (head.last_sequence, head.position) == (31, 30)
    await db_pool.execute(
        f"UPDATE {quote_ident(event_store.schema)}.checkpoints SET position = 0"
        " WHERE name = 'relay'"
    )
    await asyncio.sleep(1.0)  # past the duplicate window
    stop = asyncio.Event()
    relay = EventRelay(event_store, js, names, poll_interval_s=0.1)
    relaying = asyncio.create_task(relay.run(stop))
    try:
        appended += await _append(event_store, "b", 30)
        await _until_messages(js, names.stream, 61)
        # Another foreign message while it leads: its next publish is refused (wrong
        # expected sequence) and it resyncs from the stream's head.
        await js.publish(names.subject("manual.note"), b"not a Lathe event either")
        appended += await _append(event_store, "c", 10)
        await _until_messages(js, names.stream, 72)
    finally:
        stop.set()
        await relaying

    relayed = [h for h in await _contents(js, names.stream) if "Lathe-Position" in h]
    assert [UUID(h["Nats-Msg-Id"]) for h in relayed] == appended
    positions = [int(h["Lathe-Position"]) for h in relayed]
    assert all(a < b for a, b in itertools.pairwise(positions))
    assert await event_store.load_checkpoint("relay") == positions[-1]


async def test_after_a_refused_message_no_later_one_of_the_batch_is_stored(
    event_store: EventStore, js: JetStreamContext, infra: InfraEndpoints
) -> None:
    """A foreign message shifts the stream by one: the event after the refused one then
    finds the sequence it expects, and must still be refused (else the stream has a gap)."""
    names = EventStreamNames(infra.namespace, event_store.schema)
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=0.5)
    await _append(event_store, "d", 8)
    async with event_store.pool.acquire() as conn:
        events = (await EventTailer(event_store.schema).read(conn, 100)).events
    assert len(events) == 8
    failures: list[int] = []
    publisher = await OrderedPublisher.open(
        js,
        names,
        await read_stream_head(js, names.stream),
        position=0,
        ack_timeout_s=5.0,
        max_in_flight=100,
        on_settled=lambda n: failures.append(n) if n == 0 else None,
    )
    try:
        await publisher.publish(events[:3])
        await publisher.drain(5.0)
        await js.publish(names.subject("manual.note"), b"not a Lathe event")
        # Pipelined: all five are handed over before any answer comes back.
        await publisher.publish(events[3:])
        await publisher.drain(5.0)
    except PublishFailed as refused:
        assert "position 4" in str(refused)
    else:
        raise AssertionError("the publish after the foreign message was not refused")
    finally:
        await publisher.close()

    assert publisher.acked_position == events[2].global_position
    assert failures
    stored = await _contents(js, names.stream)
    assert [h.get("Lathe-Position") for h in stored] == ["1", "2", "3", None]
