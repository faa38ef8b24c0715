"""Every registry mutation is published on JetStream exactly once, with its headers."""

from __future__ import annotations

from collections import Counter

import asyncpg
from nats.js import JetStreamContext

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from libs.messaging import EventStreamNames
from tests.model_registry.helpers import new_model
from tests.support import registry_client as client


async def test_each_mutation_appears_once(
    registry: ModelRegistryStub,
    test_settings: LatheSettings,
    js: JetStreamContext,
    db_pool: asyncpg.Pool,
) -> None:
    name = await new_model(registry)
    policy = message_pb2.PromotionPolicy(
        protected_aliases=[message_pb2.ProtectedAlias(alias="production")]
    )
    await registry.SetPromotionPolicy(rr.SetPromotionPolicyRequest(model_name=name, policy=policy))
    await client.register(registry, name)
    await client.register(registry, name)
    await registry.ApproveModelVersion(
        rr.ApproveModelVersionRequest(model_name=name, version=2, alias="production"),
        metadata=[("lathe-actor", "bob")],
    )
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=2))
    await registry.DeleteAlias(
        rr.DeleteAliasRequest(model_name=name, alias="production", expected_version=2)
    )
    streams = [f"model-{name}", f"alias-{name}/production"]
    recorded = await db_pool.fetch(
        "SELECT event_id::text, event_type FROM model_registry.events WHERE stream_id = ANY($1)",
        streams,
    )
    assert len(recorded) == 7

    names = EventStreamNames(test_settings.namespace, "model_registry")
    subscription = await js.subscribe(names.all_subjects, ordered_consumer=True)
    published: Counter[str] = Counter()
    subjects: dict[str, str] = {}
    idle_rounds = 0
    while idle_rounds < 4:
        try:
            message = await subscription.next_msg(timeout=0.25)
        except TimeoutError:
            idle_rounds += 1 if sum(published.values()) >= len(recorded) else 0
            continue
        if message.headers and message.headers["Lathe-Stream-Id"] in streams:
            published[message.headers["Nats-Msg-Id"]] += 1
            subjects[message.headers["Nats-Msg-Id"]] = message.subject
    await subscription.unsubscribe()

    assert published == Counter({row["event_id"]: 1 for row in recorded})
    prefix = f"{test_settings.namespace}.model_registry."
    assert sorted(s.removeprefix(prefix) for s in subjects.values()) == sorted(
        [
            "alias.deleted",
            "alias.set",
            "model.created",
            "model.policy_set",
            "version.approved",
            "version.registered",
            "version.registered",
        ]
    )
