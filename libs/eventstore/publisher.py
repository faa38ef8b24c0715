"""Appending events to a JetStream stream in order, gap-free and once, whatever breaks.

The relay is the only writer of its service's stream, so it knows the sequence
number every message must get. Each message carries ``Nats-Expected-Last-Sequence``
(the sequence of the message before it) and, after the first of a leadership term,
``Nats-Expected-Last-Msg-Id`` (its predecessor's event id): JetStream stores it only
right after its predecessor. The sequence alone is not enough: a message published
by hand shifts the stream by one, and the message *after* a refused one would then
find exactly the sequence it expects and be stored, leaving a gap. Whatever happens
in between — an ack lost with a broker killed mid-batch, a stall longer than the
duplicate window, messages the NATS client still buffered from before the relay gave
up and sends after a reconnect — the stream can never get a gap, a reordering or a
second copy: such a message is refused (or, within the duplicate window, acknowledged
as the copy already stored), and the relay starts again from what the stream holds
(``read_stream_head``).

Publishing is pipelined: ``publish`` returns once the messages are handed to the
client, acks settle in order as they arrive, and ``acked_position`` tells the relay
how far it may checkpoint. Every ack wait is bounded: ``check`` raises
``PublishFailed`` once the oldest outstanding message has waited ``ack_timeout_s``
(the broker died, the connection is stuck) or any message was refused.

Acks arrive on an inbox of the publisher's own rather than through nats-py's
``publish_async``, whose futures never resolve when JetStream answers with an error
(its reply handler raises instead of failing the future) or when the broker dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from libs.eventstore.headers import POSITION, EventHeaders
from libs.eventstore.model import RecordedEvent
from libs.messaging.streams import EventStreamNames
from libs.telemetry.propagation import context_from_traceparent, inject_context

_tracer = trace.get_tracer(__name__)
_EXPECTED_LAST_SEQUENCE = Header.EXPECTED_LAST_SEQUENCE.value
_EXPECTED_LAST_MSG_ID = Header.EXPECTED_LAST_MSG_ID.value
_EXPECTED_STREAM = Header.EXPECTED_STREAM.value
_STATUS = Header.STATUS.value
# How far back from the stream's last message to look for the last relayed event
# (only messages published by something other than the relay lack its headers).
_HEAD_SCAN_LIMIT = 100


class PublishFailed(Exception):
    """JetStream refused a message or did not acknowledge it in time; resync and retry."""


@dataclass(frozen=True)
class StreamHead:
    """What a service's stream already holds, read before publishing into it."""

    last_sequence: int
    """The stream's last sequence number (0: it never held a message)."""
    position: int
    """``Lathe-Position`` of the last relayed event in it (0: none found)."""


async def read_stream_head(js: JetStreamContext, stream: str) -> StreamHead:
    """The stream's last sequence and the position of the last event relayed into it."""
    state = (await js.stream_info(stream)).state
    if state.messages == 0:
        return StreamHead(state.last_seq, 0)
    lowest = max(state.first_seq, state.last_seq - _HEAD_SCAN_LIMIT + 1)
    for sequence in range(state.last_seq, lowest - 1, -1):
        try:
            message = await js.get_msg(stream, sequence)
        except NotFoundError:  # deleted, or aged out meanwhile
            continue
        position = (message.headers or {}).get(POSITION)
        if position is not None:
            return StreamHead(state.last_seq, int(position))
    return StreamHead(state.last_seq, 0)


class _Outstanding:
    """One published message whose ack has not been settled yet."""

    __slots__ = ("deadline", "error", "position", "sequence", "span", "stored_at")

    def __init__(self, position: int, sequence: int, span: trace.Span, deadline: float) -> None:
        self.position = position
        self.sequence = sequence
        """The stream sequence this message must get."""
        self.span = span
        self.deadline = deadline
        self.stored_at: int | None = None
        """The sequence JetStream acknowledged it at, once it has."""
        self.error: str | None = None
        """Why JetStream refused it, if it did."""

    @property
    def answered(self) -> bool:
        return self.stored_at is not None or self.error is not None


class OrderedPublisher:
    """Publishes events after a stream head, one leadership term long.

    Create with ``open``; ``close`` when the term ends (acks still due are dropped).
    """

    def __init__(
        self,
        nc: NatsClient,
        names: EventStreamNames,
        head: StreamHead,
        *,
        position: int,
        ack_timeout_s: float,
        max_in_flight: int,
        on_settled: Callable[[int], None],
    ) -> None:
        self._nc = nc
        self._names = names
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        self._on_settled = on_settled
        self._sent_sequence = head.last_sequence
        # The event id of the last message handed over in this term (None: none yet, so
        # the first message is checked by sequence alone — the head may be a foreign one).
        self._sent_msg_id: str | None = None
        self._outstanding: deque[_Outstanding] = deque()
        self._by_reply: dict[str, _Outstanding] = {}
        self._inbox = nc.new_inbox()
        self._subscription: Subscription | None = None
        self._failure: PublishFailed | None = None
        self._room = asyncio.Event()
        self.acked_position = position
        """Every event up to here is stored in the stream (checkpoint at most this)."""

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        names: EventStreamNames,
        head: StreamHead,
        *,
        position: int,
        ack_timeout_s: float,
        max_in_flight: int,
        on_settled: Callable[[int], None],
    ) -> OrderedPublisher:
        """``position``: the last event the stream is known to hold (nothing at or below it
        is published again). ``on_settled(n)`` runs when ``n`` more acks advanced
        ``acked_position``, and with 0 when a message failed (e.g. to wake the relay)."""
        # The client this JetStream context publishes through (nats-py keeps it private).
        nc: NatsClient = js._nc
        publisher = cls(
            nc,
            names,
            head,
            position=position,
            ack_timeout_s=ack_timeout_s,
            max_in_flight=max_in_flight,
            on_settled=on_settled,
        )
        publisher._subscription = await nc.subscribe(f"{publisher._inbox}.*", cb=publisher._on_ack)
        return publisher

    async def close(self) -> None:
        """Stop listening for acks; whatever is outstanding is given up."""
        for pending in self._outstanding:
            _end_span(pending.span, "abandoned: the relay gave up this leadership term")
        self._outstanding.clear()
        self._by_reply.clear()
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    @property
    def in_flight(self) -> int:
        """Messages published whose acks have not arrived."""
        return len(self._outstanding)

    def deadline(self) -> float | None:
        """When the oldest outstanding ack times out (monotonic), if any is outstanding."""
        return self._outstanding[0].deadline if self._outstanding else None

    def check(self) -> None:
        """Raise ``PublishFailed`` if a message was refused or an ack is overdue."""
        if self._failure is None and self._outstanding:
            oldest = self._outstanding[0]
            if time.monotonic() >= oldest.deadline:
                self._fail(
                    f"no JetStream ack for the event at position {oldest.position} within "
                    f"{self._ack_timeout_s:g}s ({len(self._outstanding)} acks outstanding)"
                )
        if self._failure is not None:
            raise self._failure

    async def publish(self, events: Sequence[RecordedEvent]) -> None:
        """Hand ``events`` (in position order, after the last published) to the client."""
        await self._wait_for_room(len(events))
        deadline = time.monotonic() + self._ack_timeout_s
        try:
            # Handing messages over can block too (the client's outbound buffer is full
            # while it reconnects): bounded like the acks.
            async with asyncio.timeout(self._ack_timeout_s):
                for event in events:
                    await self._publish_one(event, deadline)
        except TimeoutError as exc:
            self._fail(f"the NATS client took more than {self._ack_timeout_s:g}s to take a batch")
            raise PublishFailed(str(self._failure)) from exc

    async def _publish_one(self, event: RecordedEvent, deadline: float) -> None:
        self.check()
        subject = self._names.subject(event.subject_tail)
        span = _tracer.start_span(
            f"{subject} publish",
            context=context_from_traceparent(event.metadata.traceparent),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.message.id": str(event.event_id),
                "lathe.global_position": event.global_position,
            },
        )
        carrier: dict[str, str] = {}
        inject_context(carrier, context=trace.set_span_in_context(span))
        headers = EventHeaders.encode(event, traceparent=carrier.get("traceparent", ""))
        headers[_EXPECTED_STREAM] = self._names.stream
        headers[_EXPECTED_LAST_SEQUENCE] = str(self._sent_sequence)
        if self._sent_msg_id is not None:
            headers[_EXPECTED_LAST_MSG_ID] = self._sent_msg_id
        pending = _Outstanding(event.global_position, self._sent_sequence + 1, span, deadline)
        reply = f"{self._inbox}.{pending.sequence}"
        try:
            await self._nc.publish(subject, event.payload, reply=reply, headers=headers)
        except BaseException as exc:
            _end_span(span, repr(exc))
            if isinstance(exc, (nats.errors.Error, OSError)):
                self._fail(f"could not publish the event at position {event.global_position}")
                raise PublishFailed(str(self._failure)) from exc
            raise
        self._sent_sequence += 1
        self._sent_msg_id = str(event.event_id)
        self._outstanding.append(pending)
        self._by_reply[reply] = pending

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every outstanding ack has settled."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._outstanding and self._failure is None:
                    self._room.clear()
                    await self._room.wait()
        self.check()
        if self._outstanding:
            self._fail(f"{len(self._outstanding)} acks still outstanding after {timeout_s:g}s")
            raise self._failure  # type: ignore[misc]

    async def _wait_for_room(self, count: int) -> None:
        while self._outstanding and len(self._outstanding) + count > self._max_in_flight:
            self.check()
            remaining = self._outstanding[0].deadline - time.monotonic()
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(remaining, 0.0)):
                    await self._room.wait()
        self.check()

    async def _on_ack(self, msg: Msg) -> None:
        pending = self._by_reply.pop(msg.subject, None)
        if pending is None:
            return  # settled or given up meanwhile
        if msg.headers and msg.headers.get(_STATUS) == "503":
            pending.error = f"no stream answered on {self._names.stream} (503 no responders)"
        else:
            try:
                reply = json.loads(msg.data)
                if "error" in reply:
                    pending.error = str(reply["error"].get("description", reply["error"]))
                else:
                    pending.stored_at = int(reply["seq"])
            except (ValueError, KeyError, TypeError, AttributeError):
                pending.error = f"unreadable JetStream ack {msg.data[:200]!r}"
        self._settle()

    def _settle(self) -> None:
        """Settle the answered prefix of outstanding acks (JetStream answers in order)."""
        settled = 0
        while self._outstanding and self._outstanding[0].answered:
            pending = self._outstanding.popleft()
            error = self._verify(pending)
            _end_span(pending.span, error)
            if error is not None:
                self._fail(error)
                break
            self.acked_position = pending.position
            settled += 1
        if settled:
            self._room.set()
            self._on_settled(settled)

    @staticmethod
    def _verify(pending: _Outstanding) -> str | None:
        where = f"the event at position {pending.position}"
        if pending.error is not None:
            return (
                f"JetStream refused {where} as stream sequence {pending.sequence}: {pending.error}"
            )
        if pending.stored_at != pending.sequence:
            # Only the relay writes this stream; anything else means the stream moved
            # under it (e.g. a message published by hand): resync from its head.
            return (
                f"JetStream stored {where} at sequence {pending.stored_at}, not {pending.sequence}"
            )
        return None

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = PublishFailed(reason)
            self._room.set()
            self._on_settled(0)


def _end_span(span: trace.Span, error: str | None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
