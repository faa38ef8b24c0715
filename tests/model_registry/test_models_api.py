"""CreateModel / GetModel / ListModels over gRPC against real Postgres + NATS."""

from __future__ import annotations

import uuid

import grpc
import pytest

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub


def _name(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value.code(), raised.value.details() or ""


async def test_create_then_get_returns_the_model(registry: ModelRegistryStub) -> None:
    name = _name()
    created = await registry.CreateModel(
        rr.CreateModelRequest(name=name, owner="uw-ml", description="PD", tags={"team": "uw"}),
        metadata=[("lathe-actor", "alice")],
    )
    fetched = await registry.GetModel(rr.GetModelRequest(name=name))

    assert created.model == fetched.model
    assert fetched.model.owner == "uw-ml"
    assert dict(fetched.model.tags) == {"team": "uw"}
    assert fetched.model.created_by == "alice"
    assert fetched.model.create_time.seconds > 0


async def test_duplicate_create_is_already_exists_and_changes_nothing(
    registry: ModelRegistryStub,
) -> None:
    name = _name()
    await registry.CreateModel(rr.CreateModelRequest(name=name, owner="a"))

    code, details = await _code(registry.CreateModel(rr.CreateModelRequest(name=name, owner="b")))

    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert name in details
    assert (await registry.GetModel(rr.GetModelRequest(name=name))).model.owner == "a"


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (rr.CreateModelRequest(name="", owner="a"), "name is required"),
        (rr.CreateModelRequest(name="Has Spaces", owner="a"), "not a valid name"),
        (rr.CreateModelRequest(name="x'; DROP TABLE models; --", owner="a"), "not a valid name"),
        (rr.CreateModelRequest(name="ok-name", owner=""), "owner is required"),
        (rr.CreateModelRequest(name="ok-name", owner="a", tags={"Bad Key": "v"}), "tags key"),
    ],
    ids=["empty-name", "spaces", "sql-injection", "no-owner", "bad-tag"],
)
async def test_bad_create_requests_are_invalid_argument(
    registry: ModelRegistryStub, request_: rr.CreateModelRequest, fragment: str
) -> None:
    code, details = await _code(registry.CreateModel(request_))

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in details


async def test_unknown_model_is_not_found(registry: ModelRegistryStub) -> None:
    code, details = await _code(registry.GetModel(rr.GetModelRequest(name="no-such-model")))

    assert code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in details


async def test_list_pages_in_name_order_and_filters(registry: ModelRegistryStub) -> None:
    owner = _name("owner")
    names = sorted(_name("list") for _ in range(5))
    for i, name in enumerate(names):
        tags = {"champion": "yes"} if i % 2 == 0 else {}
        await registry.CreateModel(rr.CreateModelRequest(name=name, owner=owner, tags=tags))

    seen, token = [], ""
    while True:
        page = await registry.ListModels(
            rr.ListModelsRequest(owner=owner, page_size=2, page_token=token)
        )
        assert len(page.models) <= 2
        seen += [m.name for m in page.models]
        token = page.next_page_token
        if not token:
            break
    tagged = await registry.ListModels(rr.ListModelsRequest(owner=owner, tag_key="champion"))

    assert seen == names
    assert [m.name for m in tagged.models] == names[::2]


async def test_bad_list_requests_are_invalid_argument(registry: ModelRegistryStub) -> None:
    for request in (
        rr.ListModelsRequest(page_size=5000),
        rr.ListModelsRequest(page_size=-1),
        rr.ListModelsRequest(page_token="forged"),
    ):
        code, _ = await _code(registry.ListModels(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
