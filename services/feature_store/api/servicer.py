"""gRPC surface of the feature store: validate, call the application, shape replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC
from urllib.parse import quote

import grpc

from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1 import service_pb2_grpc
from libs.errors import InvalidArgument
from libs.eventstore import ClientRequest, EventMetadata
from libs.grpckit import Encoded, validation
from libs.grpckit.caller import caller_of
from libs.telemetry import current_traceparent
from services.feature_store.app.definitions.cache import DefinitionsCache
from services.feature_store.app.definitions.catalog import DefinitionCatalog
from services.feature_store.app.definitions.commands import DefinitionCommands
from services.feature_store.app.offline.statistics import StatisticsReader
from services.feature_store.app.offline.training_sets import HistoricalReader
from services.feature_store.app.online.reader import OnlineReader
from services.feature_store.app.streaming.backfill import Backfiller
from services.feature_store.app.writes.materialize import Materializer
from services.feature_store.app.writes.push import Pusher
from services.feature_store.domain.definitions.changes import DELETABLE
from services.feature_store.domain.names import check_name
from services.feature_store.domain.serving import wire

_ARROW_CHUNK = 4 * 1024 * 1024 - 64 * 1024
"""Arrow bytes per message: with the message's framing, under gRPC's default 4 MiB receive
limit, so a client on a plain channel can read any training set."""


def _metadata(
    context: grpc.aio.ServicerContext, request: ClientRequest | None = None
) -> EventMetadata:
    """Who and why, for the events a call records; a client request id is their cause."""
    caller = caller_of(context)
    return EventMetadata(
        correlation_id=caller.request_id,
        causation_id=request.request_id if request is not None else "",
        actor=caller.actor,
        traceparent=current_traceparent(),
    )


DEPRECATION_HEADER = "lathe-deprecation"
"""Trailing metadata key of a read's warnings: "<kind> <name>: <reason>" each, with
anything outside printable ASCII percent-encoded (UTF-8)."""
_MAX_REASON = 1000
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _header_text(line: str) -> str:
    return quote(line, safe=_PRINTABLE)


def _definition(kind: str, name: str) -> tuple[str, str]:
    if kind not in DELETABLE:
        raise InvalidArgument(f"kind must be one of {', '.join(DELETABLE)}, not {kind!r}")
    return kind, check_name(name, kind)


def _reason(reason: str, *, required: bool) -> str:
    if required and not reason.strip():
        raise InvalidArgument("say why in reason (what readers should use instead)")
    if len(reason) > _MAX_REASON or "\x00" in reason:
        raise InvalidArgument(f"reason must be at most {_MAX_REASON} characters, without NUL")
    return reason.strip()


class FeatureStoreServicer(service_pb2_grpc.FeatureStoreServicer):
    def __init__(
        self,
        definitions: DefinitionCommands,
        catalog: DefinitionCatalog,
        cache: DefinitionsCache,
        reader: OnlineReader,
        pusher: Pusher,
        materializer: Materializer,
        historical: HistoricalReader,
        statistics: StatisticsReader,
        backfiller: Backfiller,
    ) -> None:
        self._definitions = definitions
        self._catalog = catalog
        self._cache = cache
        self._reader = reader
        self._pusher = pusher
        self._materializer = materializer
        self._historical = historical
        self._statistics = statistics
        self._backfiller = backfiller

    async def PlanDefinitions(
        self, request: rr.PlanDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> rr.PlanDefinitionsResponse:
        changes = [c.change for c in await self._definitions.plan(request.repository)]
        return rr.PlanDefinitionsResponse(
            changes=changes, applicable=not any(c.blocked for c in changes)
        )

    async def ApplyDefinitions(
        self, request: rr.ApplyDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ApplyDefinitionsResponse:
        key = ClientRequest.of("ApplyDefinitions", request)
        applied = await self._definitions.apply(request.repository, _metadata(context, key), key)
        await self._cache.refresh()
        return applied

    async def ListFeatureViews(
        self, request: rr.ListFeatureViewsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListFeatureViewsResponse:
        cursor = validation.decode_page_token(
            request.page_token, kind="feature_store.ListFeatureViews", fields={"after": str}
        )
        views, more = await self._catalog.feature_views_page(
            after_name=str(cursor.get("after", "")), limit=validation.page_size(request.page_size)
        )
        token = (
            validation.encode_page_token(
                {"after": views[-1].name}, kind="feature_store.ListFeatureViews"
            )
            if more
            else ""
        )
        return rr.ListFeatureViewsResponse(feature_views=views, next_page_token=token)

    async def GetFeatureView(
        self, request: rr.GetFeatureViewRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetFeatureViewResponse:
        name = check_name(request.name, "feature view")
        if request.version < 0:
            raise InvalidArgument("version must be >= 0 (0: the latest)")
        view, versions, deprecation = await self._catalog.feature_view(name, request.version)
        return rr.GetFeatureViewResponse(
            feature_view=view, versions=versions, deprecation=deprecation
        )

    async def GetOnlineFeatures(
        self, request: rr.GetOnlineFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> Encoded:
        selection = request.WhichOneof("selection")
        if selection is None:
            raise InvalidArgument("set feature_service or feature_list")
        references = tuple(request.feature_list.features)
        reply = await self._reader.read(
            feature_service=request.feature_service,
            references=references,
            entities=request.entities,
            request_data=request.request_data,
        )
        await self._warn(context, request.feature_service, references)
        return Encoded(reply)  # already a GetOnlineFeaturesResponse: sent without re-encoding

    async def _warn(
        self, context: grpc.aio.ServicerContext, feature_service: str, references: tuple[str, ...]
    ) -> None:
        """A ``lathe-deprecation`` trailing metadata entry per deprecated definition read."""
        warnings = await self._cache.deprecations(feature_service, references)
        if warnings:
            context.set_trailing_metadata(
                tuple((DEPRECATION_HEADER, _header_text(line)) for line in warnings)
            )

    async def PushFeatures(
        self, request: rr.PushFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> rr.PushFeaturesResponse:
        key = ClientRequest.of("PushFeatures", request)
        return await self._pusher.push(
            check_name(request.feature_view, "feature_view"),
            request.columns,
            _metadata(context, key),
            key,
        )

    async def Materialize(
        self, request: rr.MaterializeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rr.MaterializeResponse]:
        end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None
        start = (
            request.start_time.ToDatetime(tzinfo=UTC) if request.HasField("start_time") else None
        )
        key = ClientRequest.of("Materialize", request)
        async for progress in self._materializer.run(
            check_name(request.feature_view, "feature_view"),
            end,
            _metadata(context, key),
            start_time=start,
            request=key,
        ):
            yield rr.MaterializeResponse(progress=progress)

    async def BackfillStreamView(
        self, request: rr.BackfillStreamViewRequest, context: grpc.aio.ServicerContext
    ) -> rr.BackfillStreamViewResponse:
        key = ClientRequest.of("BackfillStreamView", request)
        return await self._backfiller.backfill(
            request.feature_view, request.version, _metadata(context, key), key
        )

    async def GetHistoricalFeatures(
        self, request: rr.GetHistoricalFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rr.GetHistoricalFeaturesResponse]:
        if request.WhichOneof("selection") is None:
            raise InvalidArgument("set feature_service or feature_list")
        key = ClientRequest.of("GetHistoricalFeatures", request)
        training = await self._historical.training_set(
            feature_service=request.feature_service,
            references=tuple(request.feature_list.features),
            label_source=request.label_source if request.HasField("label_source") else None,
            entity_rows_arrow=request.entity_rows_arrow,
            metadata=_metadata(context, key),
            request=key,
        )
        await self._warn(context, request.feature_service, tuple(request.feature_list.features))
        yield rr.GetHistoricalFeaturesResponse(snapshot=training.snapshot)
        view = memoryview(training.arrow_ipc)
        for start in range(0, len(view), _ARROW_CHUNK):
            yield Encoded(wire.arrow_ipc_part(view[start : start + _ARROW_CHUNK]))

    async def DeleteDefinition(
        self, request: rr.DeleteDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> rr.DeleteDefinitionResponse:
        kind, name = _definition(request.kind, request.name)
        key = ClientRequest.of("DeleteDefinition", request)
        deleted = await self._definitions.delete(
            kind, name, _reason(request.reason, required=False), _metadata(context, key), key
        )
        await self._cache.refresh()
        return deleted

    async def DeprecateDefinition(
        self, request: rr.DeprecateDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> rr.DeprecateDefinitionResponse:
        kind, name = _definition(request.kind, request.name)
        key = ClientRequest.of("DeprecateDefinition", request)
        deprecated = await self._definitions.deprecate(
            kind,
            name,
            _reason(request.reason, required=not request.lift),
            lift=request.lift,
            metadata=_metadata(context, key),
            request=key,
        )
        await self._cache.refresh()
        return deprecated

    async def GetFeatureStatistics(
        self, request: rr.GetFeatureStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetFeatureStatisticsResponse:
        return await self._statistics.statistics(
            check_name(request.feature_view, "feature_view"), request.snapshot_id
        )
