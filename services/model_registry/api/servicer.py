"""gRPC surface of the model registry: validate, call the application, shape replies."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from lathe.model_registry.v1 import message_pb2, service_pb2_grpc
from lathe.model_registry.v1 import request_response_pb2 as rr
from libs.errors import NotFound
from libs.eventstore import EventMetadata
from libs.grpckit import validation
from libs.grpckit.caller import caller_of
from libs.telemetry import current_traceparent
from services.model_registry.app.commands import CreateModel, RegistryCommands
from services.model_registry.app.views import ModelFilter, ModelView
from services.model_registry.store.models import ModelQueries


class ModelRegistryServicer(service_pb2_grpc.ModelRegistryServicer):
    def __init__(self, commands: RegistryCommands, models: ModelQueries) -> None:
        self._commands = commands
        self._models = models

    async def CreateModel(
        self, request: rr.CreateModelRequest, context: grpc.aio.ServicerContext
    ) -> rr.CreateModelResponse:
        command = CreateModel(
            name=validation.resource_name(request.name, "name"),
            description=request.description,
            owner=validation.require(request.owner, "owner"),
            tags=validation.tags(request.tags),
        )
        caller = caller_of(context)
        metadata = EventMetadata(
            correlation_id=caller.request_id,
            actor=caller.actor,
            traceparent=current_traceparent(),
        )
        await self._commands.create_model(command, metadata)
        return rr.CreateModelResponse(model=await self._get(command.name))

    async def GetModel(
        self, request: rr.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetModelResponse:
        return rr.GetModelResponse(model=await self._get(validation.require(request.name, "name")))

    async def ListModels(
        self, request: rr.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListModelsResponse:
        cursor = validation.decode_page_token(request.page_token)
        page = await self._models.page(
            ModelFilter(
                owner=request.owner,
                tag_key=request.tag_key,
                after_name=str(cursor.get("after", "")),
                limit=validation.page_size(request.page_size),
            )
        )
        return rr.ListModelsResponse(
            models=[_model_message(m) for m in page.models],
            next_page_token=validation.encode_page_token({"after": page.next_cursor})
            if page.next_cursor
            else "",
        )

    async def _get(self, name: str) -> message_pb2.Model:
        model = await self._models.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r}; ListModels shows the registered ones")
        return _model_message(model)


def _model_message(model: ModelView) -> message_pb2.Model:
    created = Timestamp()
    created.FromDatetime(model.created_at)
    return message_pb2.Model(
        name=model.name,
        description=model.description,
        owner=model.owner,
        tags=model.tags,
        create_time=created,
        created_by=model.created_by,
    )
