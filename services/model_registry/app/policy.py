"""Promotion gates: what moving a protected alias requires (pure logic).

Metric gates compare one recorded metric with a threshold. Policy-value gates (ADR 0024)
apply ``libs.decisioning.gate.promotion_gate`` to a policy version's off-policy
estimates: its DR value at least the production policy's + margin, and the paired gain's
lower bound above 0 — estimated on the logs of the version the alias points to *now*
(metric ``opl.logging_version``), so an estimate against an older production is refused.
An alias that points nowhere yet has no production policy to beat: the gate passes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from lathe.model_registry.v1 import message_pb2
from libs.decisioning.gate import promotion_gate
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


def describe_policy_gate(gate: message_pb2.PolicyValueGate) -> str:
    prefix = gate.prefix or "ope"
    return f"{prefix}.dr >= production + {gate.margin:g} and {prefix}.dr_gain.lower > 0"


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
    current_version: int = 0,
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
    for policy_gate in protected.policy_value_gates:
        _check_policy_value(policy_gate, alias, version, current_version)
    if protected.require_approval and not (approvers - {actor}):
        raise FailedPrecondition(
            f"alias {alias!r} requires an approval of version {version.version} by someone other "
            f"than {actor!r}: ask a reviewer to call ApproveModelVersion "
            f"(`lathe models approve {version.model_name} {version.version} {alias}`)"
        )


LOGGING_VERSION_METRIC = "opl.logging_version"


def _check_policy_value(
    gate: message_pb2.PolicyValueGate,
    alias: str,
    version: message_pb2.ModelVersion,
    current_version: int,
) -> None:
    if not current_version:
        return  # nothing serves the alias yet: no production policy to beat
    rule = describe_policy_gate(gate)
    logged_by = int(version.metrics.get(LOGGING_VERSION_METRIC, 0))
    if logged_by != current_version:
        against = f"version {logged_by}'s logs" if logged_by else "no recorded logging version"
        raise FailedPrecondition(
            f"alias {alias!r} is protected by gate '{rule}': version {version.version} was "
            f"evaluated against {against} but {alias!r} points to version {current_version}; "
            "evaluate it on the current version's decisions (lathe policies evaluate) and "
            "register that"
        )
    verdict = promotion_gate(version.metrics, margin=gate.margin, prefix=gate.prefix or "ope")
    if not verdict.passed:
        raise FailedPrecondition(
            f"alias {alias!r} is protected by gate '{rule}': version {version.version} "
            f"fails it: {verdict.reason}"
        )
