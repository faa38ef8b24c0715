"""What the relay tells its host: when it last worked, and its backlog as a gauge."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from libs.eventstore import NO_STREAM, EventRelay, EventStore
from libs.eventstore import relay as relay_module
from libs.messaging import EventStreamNames, ensure_stream
from tests.eventstore.events import note
from tests.support.infra import InfraEndpoints


async def test_a_relay_that_cannot_publish_stops_being_healthy_and_recovers(
    event_store: EventStore, js: JetStreamContext, infra: InfraEndpoints
) -> None:
    names = EventStreamNames(infra.namespace, event_store.schema)
    await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
    relay = EventRelay(event_store, js, names, poll_interval_s=0.1, ack_timeout_s=1.0)
    stop = asyncio.Event()
    relaying = asyncio.create_task(relay.run(stop))
    try:
        await event_store.append("a", [note("1")], expected_version=NO_STREAM)
        await asyncio.sleep(1.0)
        assert relay.leading
        assert relay.stalled_for_s() < 1.0, "an idle, caught-up leader is healthy"

        await js.delete_stream(names.stream)  # NATS answers, but nothing can be published
        await event_store.append("b", [note("2")], expected_version=NO_STREAM)
        await asyncio.sleep(3.0)
        assert relay.stalled_for_s() > 2.0, "a relay failing to publish looked healthy"

        await ensure_stream(js, names.stream, [names.all_subjects], duplicate_window_s=120)
        for _ in range(100):
            if (await js.stream_info(names.stream)).state.messages == 1:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert (await js.stream_info(names.stream)).state.messages == 1
        assert relay.stalled_for_s() < 1.0
    finally:
        stop.set()
        await relaying


async def test_the_backlog_gauge_reports_every_relay_that_measured_one(
    event_store: EventStore, js: JetStreamContext, infra: InfraEndpoints
) -> None:
    measured = EventRelay(event_store, js, EventStreamNames(infra.namespace, "measured"))
    unmeasured = EventRelay(event_store, js, EventStreamNames(infra.namespace, "unmeasured"))
    measured.backlog = 42

    observations = list(relay_module._observe_backlog(None))  # type: ignore[arg-type]

    assert any(o.value == 42 and o.attributes == {"service": "measured"} for o in observations), (
        observations
    )
    assert not any(o.attributes == {"service": "unmeasured"} for o in observations)
    del unmeasured
