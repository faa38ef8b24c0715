"""What the feature store has defined, learned from the events it publishes on JetStream.

The trainer never reads the feature store's schema: like any downstream team it reads
``<ns>.feature_store.*.defined`` (entities, feature views, feature services) from the
stream ``<NS>_FEATURE_STORE``, to check a spec's feature service exists, to resolve its
version, and to know the entity key columns the label query must return. The dataset
snapshot's version is read back the same way from ``dataset.snapshot_created``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import Message
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from lathe.feature_store.v1 import events_pb2 as fs
from libs.messaging import EventStreamNames

_BATCH = 500
_TYPES: dict[str, type[Message]] = {
    m.DESCRIPTOR.full_name: m
    for m in (
        fs.EntityDefined,
        fs.FeatureViewDefined,
        fs.FeatureServiceDefined,
        fs.DatasetSnapshotCreated,
    )
}


@dataclass(frozen=True)
class FeatureServiceInfo:
    """A feature service as its latest definition event says."""

    name: str
    version: int
    features: tuple[str, ...]
    join_keys: tuple[str, ...]
    """Entity key columns of the stored views it reads (the label query must return them)."""


class FeatureCatalog:
    def __init__(self, js: JetStreamContext, streams: EventStreamNames) -> None:
        self._js = js
        self._streams = streams

    async def feature_service(self, name: str) -> FeatureServiceInfo | None:
        entities: dict[str, tuple[str, ...]] = {}
        views: dict[str, str] = {}
        service: fs.FeatureServiceDefined | None = None
        for message in await self._read(self._streams.subject("*.defined")):
            match message:
                case fs.EntityDefined():
                    # A composite key (join_keys) has a column per part (ADR 0023).
                    entity = message.entity
                    entities[entity.name] = tuple(entity.join_keys) or (entity.join_key,)
                case fs.FeatureViewDefined():
                    views[message.feature_view.name] = message.feature_view.entity
                case fs.FeatureServiceDefined() if message.feature_service.name == name:
                    if (
                        service is None
                        or message.feature_service.version >= service.feature_service.version
                    ):
                        service = message
        if service is None:
            return None
        keys = []
        for reference in service.feature_service.features:
            view = reference.split(":", 1)[0].split("@", 1)[0]
            for key in entities.get(views.get(view, ""), ()):
                if key and key not in keys:
                    keys.append(key)
        return FeatureServiceInfo(
            name,
            service.feature_service.version,
            tuple(service.feature_service.features),
            tuple(keys),
        )

    async def snapshot_version(
        self, snapshot_id: str, feature_service: str, since: datetime
    ) -> int:
        """The feature service version the feature store recorded for this snapshot (0: unseen)."""
        version = 0
        for message in await self._read(self._streams.subject("dataset.snapshot_created"), since):
            if (
                isinstance(message, fs.DatasetSnapshotCreated)
                and message.snapshot_id == snapshot_id
                and message.feature_service == feature_service
            ):
                version = message.feature_service_version
        return version

    async def _read(self, subject: str, since: datetime | None = None) -> list[Message]:
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
            opt_start_time=since.isoformat() if since else None,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
        )
        try:
            subscription = await self._js.pull_subscribe(
                subject, stream=self._streams.stream, config=config
            )
        except NotFoundError:
            return []  # the feature store has not published anything yet
        messages: list[Message] = []
        try:
            pending = (await subscription.consumer_info()).num_pending
            while pending > 0:
                batch = await subscription.fetch(min(pending, _BATCH), timeout=5)
                for msg in batch:
                    kind = _TYPES.get((msg.headers or {}).get("Lathe-Event-Type", ""))
                    if kind is not None:
                        messages.append(kind.FromString(msg.data))
                pending = batch[-1].metadata.num_pending if batch else 0
        finally:
            await subscription.unsubscribe()
        return messages
