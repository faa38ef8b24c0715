"""The policy-value gate: a policy reaches a protected alias only when its off-policy
estimate beats the version the alias points to now, by the margin, with the paired
interval's lower bound above 0 (ADR 0024)."""

from __future__ import annotations

import grpc
import pytest

from lathe.model_registry.v1 import message_pb2
from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from tests.model_registry.helpers import new_model, status_of
from tests.support import registry_client as client

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _estimates(gain: float, lower: float, logging_version: int) -> dict[str, float]:
    return {
        "ope.dr.value": 0.02 + gain,
        "ope.logging.value": 0.02,
        "ope.dr_gain.value": gain,
        "ope.dr_gain.lower": lower,
        "opl.logging_version": float(logging_version),
    }


async def test_policy_value_gate_refuses_worse_stale_and_unevaluated_policies(
    registry: ModelRegistryStub,
) -> None:
    policy = message_pb2.PromotionPolicy(
        protected_aliases=[
            message_pb2.ProtectedAlias(
                alias="production",
                policy_value_gates=[message_pb2.PolicyValueGate(margin=0.005)],
            )
        ]
    )
    name = await new_model(registry, policy=policy)
    await client.register(registry, name)  # v1: the first policy, nothing to beat
    await client.register(registry, name, metrics=_estimates(0.010, 0.004, 1))  # v2 better
    await client.register(registry, name, metrics=_estimates(0.020, 0.010, 1))  # v3 vs v1's logs
    await client.register(registry, name, metrics=_estimates(-0.010, -0.020, 2))  # v4 worse
    await client.register(registry, name, metrics=_estimates(0.006, -0.001, 2))  # v5 unsure
    await client.register(registry, name)  # v6: never evaluated

    async def promote(version: int, expected: int) -> object:
        return await registry.SetAlias(
            rr.SetAliasRequest(
                model_name=name, alias="production", version=version, expected_version=expected
            )
        )

    assert (await promote(1, 0)).alias.version == 1  # type: ignore[attr-defined]
    assert (await promote(2, 1)).alias.version == 2  # type: ignore[attr-defined]
    code, details = await status_of(promote(3, 2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "evaluated against version 1's logs" in details and "points to version 2" in details
    code, details = await status_of(promote(4, 2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "below the margin" in details and "ope.dr >= production + 0.005" in details
    code, details = await status_of(promote(5, 2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "includes doing worse" in details
    code, details = await status_of(promote(6, 2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no recorded logging version" in details

    bad = message_pb2.PromotionPolicy(
        protected_aliases=[
            message_pb2.ProtectedAlias(
                alias="production",
                policy_value_gates=[message_pb2.PolicyValueGate(margin=float("nan"))],
            )
        ]
    )
    code, details = await status_of(
        registry.SetPromotionPolicy(rr.SetPromotionPolicyRequest(model_name=name, policy=bad))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "margin" in details
