"""Shared bits of the registry tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable

import grpc
import pytest

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


async def new_model(stub: ModelRegistryStub, **fields: object) -> str:
    name = str(fields.pop("name", unique()))
    await stub.CreateModel(rr.CreateModelRequest(name=name, owner="uw-ml", **fields))  # type: ignore[arg-type]
    return name
