"""gRPC surface of the model registry: validate, call the application, shape replies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from lathe.model_registry.v1 import message_pb2, service_pb2_grpc
from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument, NotFound
from libs.eventstore import ClientRequest, EventMetadata
from libs.grpckit import validation
from libs.grpckit.caller import caller_of
from libs.telemetry import current_traceparent
from services.model_registry.api import validate
from services.model_registry.app.alias_cache import AliasCache
from services.model_registry.app.catalog import RegistryCatalog
from services.model_registry.app.commands import RegistryCommands


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


class ModelRegistryServicer(service_pb2_grpc.ModelRegistryServicer):
    def __init__(
        self, commands: RegistryCommands, catalog: RegistryCatalog, aliases: AliasCache
    ) -> None:
        self._commands = commands
        self._catalog = catalog
        self._aliases = aliases

    async def CreateModel(
        self, request: rr.CreateModelRequest, context: grpc.aio.ServicerContext
    ) -> rr.CreateModelResponse:
        new = validate.new_model(request)
        key = ClientRequest.of("CreateModel", request)
        model = await self._commands.create_model(new, _metadata(context, key), key)
        return rr.CreateModelResponse(model=model)

    async def GetModel(
        self, request: rr.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetModelResponse:
        return rr.GetModelResponse(
            model=await self._catalog.model(validation.require(request.name, "name"))
        )

    async def ListModels(
        self, request: rr.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListModelsResponse:
        models, more = await self._catalog.models_page(
            after_name=validate.name_cursor(
                request.page_token, "after", kind="model_registry.ListModels"
            )
            or "",
            owner=request.owner,
            tag_key=request.tag_key,
            limit=validation.page_size(request.page_size),
        )
        token = (
            validation.encode_page_token(
                {"after": models[-1].name}, kind="model_registry.ListModels"
            )
            if more
            else ""
        )
        return rr.ListModelsResponse(models=models, next_page_token=token)

    async def SetPromotionPolicy(
        self, request: rr.SetPromotionPolicyRequest, context: grpc.aio.ServicerContext
    ) -> rr.SetPromotionPolicyResponse:
        name = validation.resource_name(request.model_name, "model_name")
        policy = validate.policy(request.policy)
        key = ClientRequest.of("SetPromotionPolicy", request)
        model = await self._commands.set_policy(name, policy, _metadata(context, key), key)
        return rr.SetPromotionPolicyResponse(model=model)

    async def RegisterModelVersion(
        self,
        request_iterator: AsyncIterator[rr.RegisterModelVersionRequest],
        context: grpc.aio.ServicerContext,
    ) -> rr.RegisterModelVersionResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("metadata"):
            raise InvalidArgument(
                "the first message of RegisterModelVersion must carry the version metadata; "
                "artifact chunks follow it"
            )
        new = validate.new_version(first.metadata)
        key = ClientRequest.of("RegisterModelVersion", first.metadata)

        async def chunks() -> AsyncIterator[tuple[str, bytes]]:
            async for message in request_iterator:
                yield validate.chunk(message)

        registered = await self._commands.register_version(
            new, chunks(), _metadata(context, key), key
        )
        return rr.RegisterModelVersionResponse(model_version=registered)

    async def GetModelVersion(
        self, request: rr.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetModelVersionResponse:
        return rr.GetModelVersionResponse(
            model_version=await self._version(request.model_name, request.version)
        )

    async def ListModelVersions(
        self, request: rr.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListModelVersionsResponse:
        name = validation.require(request.model_name, "model_name")
        limit = validation.page_size(request.page_size)
        before = validate.number_cursor(
            request.page_token, "before", kind="model_registry.ListModelVersions"
        )
        versions, more = await self._catalog.versions_page(name, before_version=before, limit=limit)
        token = (
            validation.encode_page_token(
                {"before": versions[-1].version}, kind="model_registry.ListModelVersions"
            )
            if more
            else ""
        )
        return rr.ListModelVersionsResponse(model_versions=versions, next_page_token=token)

    async def DownloadArtifact(
        self, request: rr.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rr.DownloadArtifactResponse]:
        artifact, content = await self._commands.open_artifact(
            validation.require(request.model_name, "model_name"),
            validate.version_number(request.version),
            validate.artifact_name(request.artifact_name, "artifact_name"),
        )
        yield rr.DownloadArtifactResponse(artifact=artifact)
        async for data in content:
            yield rr.DownloadArtifactResponse(data=data)

    async def SetAlias(
        self, request: rr.SetAliasRequest, context: grpc.aio.ServicerContext
    ) -> rr.SetAliasResponse:
        move = validate.alias_move(
            request.model_name,
            request.alias,
            validate.version_number(request.version),
            request.expected_version,
            request.traffic_share,
        )
        key = ClientRequest.of("SetAlias", request)
        try:
            alias = await self._commands.move_alias(move, _metadata(context, key), key)
        finally:  # even when the outcome is unknown (a COMMIT cut off): re-read next time
            self._aliases.forget(move.model_name, move.alias)
        return rr.SetAliasResponse(alias=alias)

    async def DeleteAlias(
        self, request: rr.DeleteAliasRequest, context: grpc.aio.ServicerContext
    ) -> rr.DeleteAliasResponse:
        move = validate.alias_move(request.model_name, request.alias, 0, request.expected_version)
        key = ClientRequest.of("DeleteAlias", request)
        try:
            await self._commands.move_alias(move, _metadata(context, key), key)
        finally:
            self._aliases.forget(move.model_name, move.alias)
        return rr.DeleteAliasResponse()

    async def ResolveAlias(
        self, request: rr.ResolveAliasRequest, context: grpc.aio.ServicerContext
    ) -> rr.ResolveAliasResponse:
        model_name = validation.require(request.model_name, "model_name")
        alias = validation.require(request.alias, "alias")
        if request.HasField("as_of"):
            as_of = validate.as_of(request.as_of)
            return rr.ResolveAliasResponse(
                alias=await self._catalog.alias_as_of(model_name, alias, as_of)
            )
        state = await self._aliases.alias(model_name, alias)
        if state is None or state.alias.version == 0:
            await self._catalog.model(model_name)
            raise NotFound(f"alias {alias!r} of model {model_name!r} is not set")
        return rr.ResolveAliasResponse(alias=state.alias)

    async def ApproveModelVersion(
        self, request: rr.ApproveModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> rr.ApproveModelVersionResponse:
        key = ClientRequest.of("ApproveModelVersion", request)
        metadata = _metadata(context, key)
        if metadata.actor == "anonymous":
            raise InvalidArgument(
                "an approval needs an identified approver: send the 'lathe-actor' metadata"
            )
        await self._commands.approve(
            validation.resource_name(request.model_name, "model_name"),
            validate.version_number(request.version),
            validation.resource_name(request.alias, "alias"),
            request.comment,
            metadata,
            key,
        )
        return rr.ApproveModelVersionResponse()

    async def GetLineage(
        self, request: rr.GetLineageRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetLineageResponse:
        version = await self._version(request.model_name, request.version)
        aliases = await self._catalog.aliases_of_version(version.model_name, version.version)
        return rr.GetLineageResponse(
            lineage=version.lineage, artifacts=version.artifacts, aliases=aliases
        )

    async def GetModelHistory(
        self, request: rr.GetModelHistoryRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetModelHistoryResponse:
        name = validation.require(request.model_name, "model_name")
        limit = validation.page_size(request.page_size)
        after = (
            validate.number_cursor(
                request.page_token, "after", kind="model_registry.GetModelHistory"
            )
            or 0
        )
        entries, more = await self._catalog.history(name, after_position=after, limit=limit)
        token = (
            validation.encode_page_token(
                {"after": entries[-1].position}, kind="model_registry.GetModelHistory"
            )
            if more
            else ""
        )
        return rr.GetModelHistoryResponse(entries=entries, next_page_token=token)

    async def _version(self, model_name: str, version: int) -> message_pb2.ModelVersion:
        name = validation.require(model_name, "model_name")
        return await self._catalog.version(name, validate.version_number(version))
