"""Concurrent Predicts share feature calls and batches, and each still gets its own rows."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    predict,
    register,
    row,
    serving_version,
    set_alias,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_concurrent_requests_get_their_own_scores_and_errors(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    version = await register(registry, credit, name, export(credit, family="ft_transformer"))
    await set_alias(registry, name, "production", version)
    async with start_inference(name, feature_calls_in_flight=1) as inference:
        await eventually(
            lambda: _serves(inference, name, version), what=f"{name} v{version} serves"
        )
        cases = [([row(credit.loan_ids[i], amount=1000.0 + 37 * i)], None) for i in range(40)] + [
            ([row(credit.loan_ids[i]) for i in range(3)], None)
        ]
        alone = [await predict(inference, name, rows) for rows, _ in cases]
        # The same requests at once (and one mistyped among them), several times over.
        bad = row(credit.loan_ids[0])
        bad.request_features["requested_amount"].CopyFrom(fs.Value(string_value="lots"))
        for _ in range(3):
            answers = await asyncio.gather(
                *(predict(inference, name, rows) for rows, _ in cases),
                _code(inference, name, bad),
            )
            for one, together in zip(alone, answers[:-1], strict=True):
                assert [p.scores[0] for p in together.predictions] == [
                    p.scores[0] for p in one.predictions
                ]
                assert list(together.feature_names) == list(one.feature_names)
                assert [list(p.feature_event_times) for p in together.predictions] == [
                    list(p.feature_event_times) for p in one.predictions
                ]
            assert answers[-1] == "INVALID_ARGUMENT"


async def _code(inference, name: str, bad_row) -> str:  # type: ignore[no-untyped-def]
    try:
        await inference.Predict(rr.PredictRequest(model_name=name, rows=[bad_row]), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def _serves(inference, name: str, version: int) -> bool:  # type: ignore[no-untyped-def]
    return await serving_version(inference, name) == version
