"""A downstream team's subscriber, running beside the demo: registry events and
prediction logs from JetStream, decoded with the published protos.

It is what any consumer does (``examples/subscriber.py`` is the same thing with nothing
but nats-py and the generated protos): the ``Lathe-Event-Type`` header names the
protobuf message; the ``traceparent`` header continues the producer's trace, so a
consumer's span joins the trace of the request that caused the event.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from lathe.inference.v1 import events_pb2 as inference_events
from lathe.model_registry.v1 import events_pb2 as registry_events
from libs.messaging import EventStreamNames
from libs.telemetry import extract_context

assert registry_events.DESCRIPTOR and inference_events.DESCRIPTOR  # registers the messages
_tracer = trace.get_tracer("lathe.demo.downstream")


@dataclass(frozen=True)
class Received:
    subject: str
    event_type: str
    actor: str
    message: Message
    trace_id: str


@dataclass
class Downstream:
    """Collects every registry event, prediction (and decision) log and reward outcome
    published while it runs."""

    registry: list[Received] = field(default_factory=list)
    predictions: list[Received] = field(default_factory=list)
    rewards: list[Received] = field(default_factory=list)
    """``RewardJoined`` and ``RewardRefused`` (outcomes on ``<ns>.ingest.outcomes``)."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _subscriptions: list[object] = field(default_factory=list)

    @classmethod
    async def start(cls, nats_client: NatsClient, namespace: str) -> Downstream:
        downstream = cls()
        js = nats_client.jetstream()
        registry = EventStreamNames(namespace, "model_registry")
        inference = EventStreamNames(namespace, "inference")
        for subject, sink in (
            (registry.all_subjects, downstream.registry),
            (inference.subject("prediction.logged"), downstream.predictions),
            (inference.subject("reward.*"), downstream.rewards),
        ):
            subscription = await js.subscribe(
                subject, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW
            )
            downstream._subscriptions.append(subscription)
            downstream._tasks.append(asyncio.create_task(_drain(subscription, sink)))
        return downstream

    def subjects(self, namespace: str) -> list[str]:
        return [
            EventStreamNames(namespace, "model_registry").all_subjects,
            EventStreamNames(namespace, "inference").subject("prediction.logged"),
            EventStreamNames(namespace, "inference").subject("reward.*"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()  # type: ignore[attr-defined]


async def _drain(subscription: object, sink: list[Received]) -> None:
    while True:
        try:
            message: Msg = await subscription.next_msg(timeout=1)  # type: ignore[attr-defined]
        except TimeoutError:
            continue
        sink.append(decode(message))


def decode(message: Msg) -> Received:
    """The event a message carries, processed in a CONSUMER span of the producer's trace."""
    headers = message.headers or {}
    with _tracer.start_as_current_span(
        f"{message.subject} process", context=extract_context(headers), kind=SpanKind.CONSUMER
    ) as span:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(headers["Lathe-Event-Type"])
        decoded = GetMessageClass(descriptor).FromString(message.data)
        trace_id = f"{span.get_span_context().trace_id:032x}"
    return Received(
        message.subject, descriptor.name, headers.get("Lathe-Actor", ""), decoded, trace_id
    )
