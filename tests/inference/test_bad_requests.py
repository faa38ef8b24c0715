"""Bad requests get clear status codes with messages that say what to fix, never INTERNAL."""

from __future__ import annotations

import uuid

import grpc
import pytest

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from services.inference.api import validate
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    register,
    row,
    serving_version,
    set_alias,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_bad_requests_get_clear_codes(
    registry: ModelRegistryStub, credit: Credit, start_inference: InferenceFactory
) -> None:
    name = f"credit-{uuid.uuid4().hex[:8]}"
    await create_model(registry, name)
    version = await register(registry, credit, name, export(credit, seed=1))
    await set_alias(registry, name, "production", version)
    async with start_inference(name, max_request_rows=16) as inference:

        async def ready() -> bool:
            return await serving_version(inference, name) == version

        await eventually(ready, what="serves")

        async def code(request: rr.PredictRequest, within_s: float = 5.0) -> tuple[str, str]:
            try:
                await inference.Predict(request, timeout=within_s)
            except grpc.aio.AioRpcError as error:
                return error.code().name, error.details() or ""
            return "OK", ""

        wrong_type = row("L00001")
        wrong_type.request_features["requested_amount"].CopyFrom(fs.Value(string_value="lots"))
        many_features = row("L00001")
        for i in range(validate.MAX_REQUEST_FEATURES):
            many_features.request_features[f"unread_{i}"].CopyFrom(fs.Value(float64_value=1.0))
        int_keyed = m.PredictionInput(entity_keys={"loan_id": fs.Value(float64_value=1.5)})
        cases = {
            "unknown model": (rr.PredictRequest(model_name="nope", rows=[row("L1")]), "NOT_FOUND"),
            "unknown alias": (
                rr.PredictRequest(model_name=name, alias="staging", rows=[row("L00001")]),
                "NOT_FOUND",
            ),
            "unknown entity": (
                rr.PredictRequest(model_name=name, rows=[row("NO-SUCH-LOAN")]),
                "NOT_FOUND",
            ),
            "wrong key name": (
                rr.PredictRequest(
                    model_name=name,
                    rows=[m.PredictionInput(entity_keys={"customer": fs.Value(string_value="x")})],
                ),
                "INVALID_ARGUMENT",
            ),
            "wrong key type": (
                rr.PredictRequest(model_name=name, rows=[int_keyed]),
                "INVALID_ARGUMENT",
            ),
            "one key, two types": (
                rr.PredictRequest(
                    model_name=name,
                    rows=[
                        row("L00001"),
                        m.PredictionInput(
                            entity_keys={"loan_id": fs.Value(int64_value=1)},
                            request_features=row("L00002").request_features,
                        ),
                    ],
                ),
                "INVALID_ARGUMENT",
            ),
            "decision id too long": (
                rr.PredictRequest(model_name=name, rows=[row("L00001", decision_id="d" * 129)]),
                "INVALID_ARGUMENT",
            ),
            "one decision id on two rows": (
                rr.PredictRequest(
                    model_name=name,
                    rows=[row("L00001", decision_id="d-1"), row("L00002", decision_id="d-1")],
                ),
                "INVALID_ARGUMENT",
            ),
            "too many distinct request features": (
                rr.PredictRequest(model_name=name, rows=[many_features]),
                "INVALID_ARGUMENT",
            ),
            "wrong feature type": (
                rr.PredictRequest(model_name=name, rows=[wrong_type]),
                "INVALID_ARGUMENT",
            ),
            "no rows": (rr.PredictRequest(model_name=name), "INVALID_ARGUMENT"),
            "too many rows": (
                rr.PredictRequest(model_name=name, rows=[row("L00001")] * 17),
                "INVALID_ARGUMENT",
            ),
            "missing request feature": (
                rr.PredictRequest(
                    model_name=name,
                    rows=[
                        m.PredictionInput(entity_keys={"loan_id": fs.Value(string_value="L00001")})
                    ],
                ),
                "INVALID_ARGUMENT",
            ),
        }
        for what, (request, expected) in cases.items():
            got, details = await code(request)
            assert got == expected, (what, got, details)
            assert details and "internal" not in details.lower(), (what, details)
        # Refused by inference itself, before any feature store call:
        _, details = await code(cases["one key, two types"][0])
        assert "one type in every row" in details
        _, details = await code(cases["decision id too long"][0])
        assert "at most 128 printable characters" in details
        _, details = await code(cases["one decision id on two rows"][0])
        assert "rows[0] and rows[1] have the same decision_id" in details
        _, details = await code(cases["too many distinct request features"][0])
        assert f"more than {validate.MAX_REQUEST_FEATURES} distinct request features" in details
        # Page tokens this service never gives: non-ASCII digits, a foreign id, garbage.
        for token in ("\u0661\u0662:x", "\uff11\uff12:x", "12:" + "d" * 129, "-5:x", "12", "x:y"):
            listing = rr.ListDecisionsRequest(
                model_name=name, reward_definition="repaid", reward_definition_version=1
            )
            listing.page_token = token
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await inference.ListDecisions(listing, timeout=5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
            assert "page_token is not one this service gave" in (refused.value.details() or "")
        # An expired deadline: DEADLINE_EXCEEDED, never INTERNAL.
        got, _ = await code(rr.PredictRequest(model_name=name, rows=[row("L00001")]), within_s=1e-6)
        assert got == "DEADLINE_EXCEEDED"
        # Unknown entities can be scored with the training fills when asked for.
        allowed = await inference.Predict(
            rr.PredictRequest(
                model_name=name, rows=[row("NO-SUCH-LOAN")], allow_unknown_entities=True
            )
        )
        assert allowed.predictions[0].missing_features
