"""A downstream team's subscriber: model promotions and prediction logs, from JetStream.

It needs nothing of Lathe but its published protos (the generated ``lathe.*`` modules,
``gen/python`` here) and ``nats-py``:

    PYTHONPATH=gen/python .venv/bin/python examples/subscriber.py \
        --nats-url nats://127.0.0.1:54222 --from-start --idle-exit 5

(`lathe status` prints the NATS URL; the embedded one listens on 54222.) Each event is a
protobuf message named by its ``Lathe-Event-Type`` header; ``Nats-Msg-Id`` is the
event's id (deduplicate on it: JetStream delivers at least once). A durable consumer
remembers where it stopped: run it again and it goes on from there.

Building training data from ``PredictionLogged`` events: a client's retry is logged again
as a new event under the same decision id, and shadow versions log the rows they scored
under production's ids. Keep the latest ``predict_time`` per (model, decision id), and
leave out ``ARM_SHADOW`` unless you study the shadow (docs/decisioning.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import nats
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from lathe.inference.v1 import events_pb2 as inference_events
from lathe.model_registry.v1 import events_pb2 as registry_events

assert registry_events.DESCRIPTOR and inference_events.DESCRIPTOR  # registers the messages


@dataclass(frozen=True)
class Feed:
    """One JetStream stream and the subject filter this team reads from it."""

    stream: str
    subject: str


def feeds(namespace: str) -> list[Feed]:
    prefix = namespace.upper()
    return [
        Feed(f"{prefix}_MODEL_REGISTRY", f"{namespace}.model_registry.alias.*"),  # promotions
        Feed(f"{prefix}_INFERENCE", f"{namespace}.inference.prediction.logged"),
    ]


def decode(event_type: str, data: bytes) -> Message:
    """The protobuf message a ``Lathe-Event-Type`` header names."""
    descriptor = descriptor_pool.Default().FindMessageTypeByName(event_type)
    return GetMessageClass(descriptor).FromString(data)


def describe(event: Message) -> str:
    """One line per event, as this team would log it."""
    name = event.DESCRIPTOR.name
    if name == "AliasSet":
        share = f" ({event.traffic_share:.0%} of traffic)" if event.traffic_share else ""
        return f"promotion: {event.model_name} {event.alias} -> v{event.version}{share}"
    if name == "AliasDeleted":
        return f"alias removed: {event.model_name} {event.alias}"
    if name == "PredictionLogged":
        keys = ",".join(
            f"{k}={v.string_value or v.int64_value}" for k, v in event.entity_keys.items()
        )
        scores = ", ".join(
            f"{n}={s:.4f}" for n, s in zip(event.output_names, event.scores, strict=True)
        )
        return (
            f"prediction: {event.model_name} v{event.model_version} {keys} {scores} "
            f"(decision {event.decision_id})"
        )
    return f"{name}"


async def follow(
    nats_url: str,
    namespace: str,
    on_event: Callable[[str, Message], None],
    *,
    durable: str,
    from_start: bool,
    idle_exit_s: float | None,
) -> int:
    """Read every feed until nothing arrives for ``idle_exit_s`` (None: for ever);
    returns how many events were handled."""
    client = await nats.connect(nats_url, name=durable)
    seen: set[str] = set()
    handled = 0
    try:
        js = client.jetstream()
        subscriptions = [
            await js.pull_subscribe(
                feed.subject,
                durable=f"{durable}-{feed.stream.lower()}",
                stream=feed.stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
                ),
            )
            for feed in feeds(namespace)
        ]
        idle = 0.0
        while idle_exit_s is None or idle < idle_exit_s:
            got = 0
            for subscription in subscriptions:
                try:
                    messages = await subscription.fetch(100, timeout=0.5)
                except TimeoutError:
                    continue
                for message in messages:
                    headers = message.headers or {}
                    event_id = headers.get("Nats-Msg-Id", "")
                    if event_id not in seen:  # a redelivery is handled once
                        seen.add(event_id)
                        on_event(message.subject, decode(headers["Lathe-Event-Type"], message.data))
                        handled += 1
                    await message.ack()
                    got += 1
            idle = 0.0 if got else idle + 0.5 * len(subscriptions)
    finally:
        await client.close()
    return handled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--nats-url", default=os.environ.get("LATHE_NATS_URL", "nats://127.0.0.1:54222")
    )
    parser.add_argument("--namespace", default=os.environ.get("LATHE_NAMESPACE", "lathe"))
    parser.add_argument("--durable", default="risk-reporting")
    parser.add_argument(
        "--from-start", action="store_true", help="a new consumer starts at the first event"
    )
    parser.add_argument(
        "--idle-exit", type=float, default=None, help="stop after this many quiet seconds"
    )
    args = parser.parse_args()
    handled = asyncio.run(
        follow(
            args.nats_url,
            args.namespace,
            lambda subject, event: print(describe(event), flush=True),
            durable=args.durable,
            from_start=args.from_start,
            idle_exit_s=args.idle_exit,
        )
    )
    print(f"{handled} events")


if __name__ == "__main__":
    main()
