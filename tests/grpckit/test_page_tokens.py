"""Page tokens on a real registry: only an unaltered token of the same RPC is accepted."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.grpckit import validation
from tests.model_registry.helpers import new_model

LIST_MODELS = "model_registry.ListModels"
LIST_VERSIONS = "model_registry.ListModelVersions"
HISTORY = "model_registry.GetModelHistory"


def _plain(cursor: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


# (token, the one RPC that accepts it, if any)
TOKENS = [
    (_plain({"after": "x"}), None),  # the shape tokens had before they were bound to an RPC
    (_plain({"before": "not-a-number"}), None),
    (_plain({"after": [1, 2]}), None),
    (_plain(["x"]), None),
    (validation.encode_page_token({"after": "b"}, kind="feature_store.ListFeatureViews"), None),
    (validation.encode_page_token({"after": "b"}, kind=LIST_MODELS), LIST_MODELS),
    (validation.encode_page_token({"before": 3}, kind=LIST_VERSIONS), LIST_VERSIONS),
    (validation.encode_page_token({"after": 3}, kind=HISTORY), HISTORY),
    (validation.encode_page_token({"after": 3}, kind=HISTORY)[:-3] + "AAA", None),
    (validation.encode_page_token({"after": "3"}, kind=HISTORY), None),
]


@pytest.mark.parametrize(("token", "accepted_by"), TOKENS)
async def test_edited_or_foreign_tokens_are_invalid_argument(
    registry: ModelRegistryStub, token: str, accepted_by: str | None
) -> None:
    name = await new_model(registry)
    calls = {
        LIST_MODELS: registry.ListModels(rr.ListModelsRequest(page_token=token)),
        LIST_VERSIONS: registry.ListModelVersions(
            rr.ListModelVersionsRequest(model_name=name, page_token=token)
        ),
        HISTORY: registry.GetModelHistory(
            rr.GetModelHistoryRequest(model_name=name, page_token=token)
        ),
    }
    for kind, call in calls.items():
        if kind == accepted_by:
            await call
            continue
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (kind, raised.value)
        assert "not a token this RPC" in (raised.value.details() or "")
