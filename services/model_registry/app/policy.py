"""Promotion gates: what moving a protected alias requires (pure logic)."""

from __future__ import annotations

import operator
from collections.abc import Callable

from lathe.model_registry.v1 import message_pb2
from libs.errors import FailedPrecondition

_C = message_pb2.Comparison
_COMPARE: dict[int, tuple[str, Callable[[float, float], bool]]] = {
    _C.COMPARISON_GREATER_OR_EQUAL: (">=", operator.ge),
    _C.COMPARISON_GREATER: (">", operator.gt),
    _C.COMPARISON_LESS_OR_EQUAL: ("<=", operator.le),
    _C.COMPARISON_LESS: ("<", operator.lt),
}


def describe_gate(gate: message_pb2.MetricGate) -> str:
    symbol = _COMPARE[gate.comparison][0]
    return f"{gate.metric} {symbol} {gate.threshold:g}"


def protection_for(
    policy: message_pb2.PromotionPolicy, alias: str
) -> message_pb2.ProtectedAlias | None:
    for protected in policy.protected_aliases:
        if protected.alias == alias:
            return protected
    return None


def check_promotion(
    policy: message_pb2.PromotionPolicy,
    alias: str,
    version: message_pb2.ModelVersion,
    *,
    approvers: set[str],
    actor: str,
) -> None:
    """Raise FailedPrecondition naming the first gate ``version`` fails for ``alias``."""
    protected = protection_for(policy, alias)
    if protected is None:
        return
    for gate in protected.gates:
        value = version.metrics.get(gate.metric)
        if value is None:
            raise FailedPrecondition(
                f"alias {alias!r} is protected by gate '{describe_gate(gate)}' but version "
                f"{version.version} has no metric {gate.metric!r}; register a version that "
                "records it"
            )
        if not _COMPARE[gate.comparison][1](value, gate.threshold):
            raise FailedPrecondition(
                f"alias {alias!r} is protected by gate '{describe_gate(gate)}': version "
                f"{version.version} has {gate.metric}={value:g}"
            )
    if protected.require_approval and not (approvers - {actor}):
        raise FailedPrecondition(
            f"alias {alias!r} requires an approval of version {version.version} by someone other "
            f"than {actor!r}: ask a reviewer to call ApproveModelVersion "
            f"(`lathe models approve {version.model_name} {version.version} {alias}`)"
        )
