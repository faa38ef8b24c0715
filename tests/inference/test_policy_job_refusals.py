"""EvaluatePolicy / LearnPolicy refuse what they cannot use, saying what to fix."""

from __future__ import annotations

import uuid

import grpc
import pytest

from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from lathe.trainer.v1 import message_pb2 as tm
from lathe.trainer.v1 import request_response_pb2 as trr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings, ServiceName
from services.trainer.service import SPEC as TRAINER
from tests.inference.conftest import InferenceFactory
from tests.inference.helpers import (
    Credit,
    create_model,
    eventually,
    export,
    register,
    serving_version,
    set_alias,
)
from tests.inference.policy_world import legacy_onnx, logging_spec, register_policy
from tests.support.hosting import hosted

pytestmark = pytest.mark.asyncio(loop_scope="session")
LOGS = tm.DecisionLogWindow(reward_definition="margin", reward_definition_version=1)


async def _status(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


async def test_policy_jobs_refuse_bad_requests_with_what_to_fix(
    registry: ModelRegistryStub,
    credit: Credit,
    start_inference: InferenceFactory,
    test_settings: LatheSettings,
) -> None:
    policy = f"line-{uuid.uuid4().hex[:8]}"
    plain = f"score-{uuid.uuid4().hex[:8]}"
    await create_model(registry, policy)
    await create_model(registry, plain)
    v1 = await register_policy(registry, credit, policy, legacy_onnx(credit), logging_spec(policy))
    await set_alias(registry, policy, "production", v1)
    await register(registry, credit, plain, export(credit))
    async with (
        start_inference(policy) as inference,
        hosted(TRAINER, test_settings),
        grpc.aio.insecure_channel(test_settings.service_addr(ServiceName.TRAINER)) as channel,
    ):
        trainer = TrainerStub(channel)

        async def serving() -> bool:
            return await serving_version(inference, policy) == v1

        await eventually(serving, what="policy serving")
        code, details = await _status(
            trainer.EvaluatePolicy(trr.EvaluatePolicyRequest(model_name=policy))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "reward_definition" in details
        code, details = await _status(
            trainer.EvaluatePolicy(trr.EvaluatePolicyRequest(model_name="nope-x", logs=LOGS))
        )
        assert code == grpc.StatusCode.NOT_FOUND
        code, details = await _status(
            trainer.EvaluatePolicy(trr.EvaluatePolicyRequest(model_name=plain, logs=LOGS))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not a policy" in details
        code, details = await _status(
            trainer.EvaluatePolicy(trr.EvaluatePolicyRequest(model_name=policy, logs=LOGS))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no usable decisions" in details
        code, details = await _status(
            trainer.LearnPolicy(
                trr.LearnPolicyRequest(model_name=policy, logs=LOGS, policy_json="{}")
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "policy_json" in details
        code, details = await _status(
            trainer.LearnPolicy(trr.LearnPolicyRequest(model_name=plain, logs=LOGS))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no production" in details
        code, details = await _status(
            trainer.LearnPolicy(trr.LearnPolicyRequest(model_name=policy, logs=LOGS, holdout=0.99))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "holdout" in details
