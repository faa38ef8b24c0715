"""Reading the registry back: models, versions, lineage, aliases as of a time, history.

Every read RPC but ``ResolveAlias`` (served from ``AliasCache``) comes here. Each is one
read model query on its hot path; NOT_FOUND says which of model, version or alias is
missing and where to look, and an unknown model is NOT_FOUND rather than an empty page.
"""

from __future__ import annotations

from datetime import datetime

from lathe.model_registry.v1 import events_pb2, message_pb2
from libs.errors import NotFound
from services.model_registry.app.history import summarize
from services.model_registry.events import CATALOG, alias_stream, model_stream
from services.model_registry.store.queries import RegistryQueries


class RegistryCatalog:
    def __init__(self, queries: RegistryQueries) -> None:
        self._queries = queries

    async def model(self, name: str) -> message_pb2.Model:
        """The model with its live aliases; NotFound if there is none."""
        model = await self._queries.model(name)
        if model is None:
            raise NotFound(f"no model named {name!r}; ListModels shows the registered ones")
        return model

    async def models_page(
        self, *, after_name: str, owner: str, tag_key: str, limit: int
    ) -> tuple[list[message_pb2.Model], bool]:
        """Up to ``limit`` models named after ``after_name``, in name order, and whether
        more follow."""
        return await self._queries.models_page(
            after_name=after_name, owner=owner, tag_key=tag_key, limit=limit
        )

    async def version(self, model_name: str, version: int) -> message_pb2.ModelVersion:
        """One version; NotFound names the model if it is the model that is missing."""
        found = await self._queries.version(model_name, version)
        if found is None:
            await self.model(model_name)
            raise NotFound(
                f"model {model_name!r} has no version {version}; ListModelVersions shows them"
            )
        return found

    async def versions_page(
        self, model_name: str, *, before_version: int | None, limit: int
    ) -> tuple[list[message_pb2.ModelVersion], bool]:
        """Newest first, below ``before_version`` (None: from the newest), and whether more
        follow; NotFound for an unknown model (not an empty first page)."""
        versions, more = await self._queries.versions_page(
            model_name, before_version=before_version or 2**62, limit=limit
        )
        if not versions and before_version is None:
            await self.model(model_name)
        return versions, more

    async def aliases_of_version(self, model_name: str, version: int) -> list[str]:
        """The aliases pointing at the version now."""
        return await self._queries.aliases_of_version(model_name, version)

    async def alias_as_of(self, model_name: str, alias: str, as_of: datetime) -> message_pb2.Alias:
        """Where the alias pointed at ``as_of``, from the event log itself."""
        event = await self._queries.last_event_as_of(alias_stream(model_name, alias), as_of)
        message = CATALOG.decode(event.event_type, event.payload) if event is not None else None
        if event is None or not isinstance(message, events_pb2.AliasSet):
            await self.model(model_name)
            raise NotFound(
                f"alias {alias!r} of model {model_name!r} was not set at {as_of.isoformat()}"
            )
        resolved = message_pb2.Alias(
            name=alias,
            version=message.version,
            traffic_share=message.traffic_share,
            updated_by=event.metadata.actor,
        )
        resolved.update_time.FromDatetime(event.recorded_at)
        return resolved

    async def history(
        self, model_name: str, *, after_position: int, limit: int
    ) -> tuple[list[message_pb2.HistoryEntry], bool]:
        """The model's events and its aliases' (deleted ones too) in log order, after
        ``after_position``, and whether more follow; NotFound for an unknown model."""
        await self.model(model_name)
        streams = [model_stream(model_name)] + [
            alias_stream(model_name, alias)
            for alias in await self._queries.alias_names_ever(model_name)
        ]
        events = await self._queries.events_of_streams(
            streams, after_position=after_position, limit=limit + 1
        )
        entries = []
        for event in events[:limit]:
            entry = message_pb2.HistoryEntry(
                position=event.global_position,
                event_id=str(event.event_id),
                event_type=event.event_type,
                stream_id=event.stream_id,
                actor=event.metadata.actor,
                summary=summarize(CATALOG.decode(event.event_type, event.payload)),
            )
            entry.record_time.FromDatetime(event.recorded_at)
            entries.append(entry)
        return entries, len(events) > limit
