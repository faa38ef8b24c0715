"""The stream ids events carry are the ones events.proto documents to subscribers."""

from __future__ import annotations

import re

from nats.js import JetStreamContext

from lathe.model_registry.v1 import events_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.config import LatheSettings
from libs.messaging import EventStreamNames
from tests.model_registry.helpers import new_model
from tests.support import registry_client as client
from tests.support.subprocesses import REPO_ROOT

EVENTS_PROTO = REPO_ROOT / "protos" / "lathe" / "model_registry" / "v1" / "events.proto"


def _documented_stream_ids() -> dict[str, str]:
    """Aggregate -> stream id template, from the "Streams" paragraph of events.proto."""
    comment = " ".join(
        line.removeprefix("//").strip()
        for line in EVENTS_PROTO.read_text().splitlines()
        if line.startswith("//")
    )
    paragraph = comment[comment.index("Streams") :]
    templates = re.findall(r"`((model|alias|artifact)-[^`]*)`", paragraph)
    return {aggregate: template for template, aggregate in templates}


async def test_a_real_alias_set_event_carries_the_documented_stream_id(
    registry: ModelRegistryStub, test_settings: LatheSettings, js: JetStreamContext
) -> None:
    documented = _documented_stream_ids()
    assert set(documented) == {"model", "alias", "artifact"}
    name = await new_model(registry)
    await client.register(registry, name)
    await registry.SetAlias(rr.SetAliasRequest(model_name=name, alias="production", version=1))

    names = EventStreamNames(test_settings.namespace, "model_registry")
    subscription = await js.subscribe(names.all_subjects, ordered_consumer=True)
    model_of = {
        "lathe.model_registry.v1.AliasSet": (
            "alias",
            lambda d: events_pb2.AliasSet.FromString(d).model_name,
        ),
        "lathe.model_registry.v1.ModelCreated": (
            "model",
            lambda d: events_pb2.ModelCreated.FromString(d).name,
        ),
    }
    carried: dict[str, str] = {}
    try:
        while len(carried) < 2:
            message = await subscription.next_msg(timeout=10)
            headers = message.headers or {}
            aggregate, decode = model_of.get(headers.get("Lathe-Event-Type", ""), ("", None))
            if decode is not None and decode(message.data) == name:
                carried[aggregate] = headers["Lathe-Stream-Id"]
    finally:
        await subscription.unsubscribe()

    assert carried["alias"] == documented["alias"].replace("<name>", name).replace(
        "<alias>", "production"
    )
    assert carried["model"] == documented["model"].replace("<name>", name)
