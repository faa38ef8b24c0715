"""Decisioning: policies that choose among actions, evaluated and learned off-policy.

A policy version is an ONNX scorer (one score per action) plus ``policy.json``
(``PolicySpec``: actions, exploration, salt). ``distribution`` turns scores into the exact
probabilities over the eligible actions; ``draw`` picks one by a hash of the decision id
(reproducible, auditable) and gives the propensity to log. From logged decisions with
rewards (``LoggedDecisions``), ``evaluate`` estimates any target policy's value (IPS,
SNIPS, doubly robust with a cross-fitted reward model, intervals), ``learn_policy`` learns
a new policy and evaluates it on held-out logs, and ``promotion_gate`` applies the
promotion rule to the resulting metrics. ``simulator`` is a world with a known reward for
tests and the demo. Pure: no gRPC, SQL or NATS. Design: docs/adr/0020-decisioning.md.
"""

from libs.decisioning.distribution import check_distribution, distribution, eligible_mask
from libs.decisioning.draw import draw, unit_hash
from libs.decisioning.evaluate import EvaluationConfig, Report, evaluate
from libs.decisioning.gate import GateVerdict, promotion_gate
from libs.decisioning.intervals import Estimate
from libs.decisioning.learning import LearningConfig
from libs.decisioning.logs import LoggedDecisions, LogsError
from libs.decisioning.opl import LearnedPolicy, learn_policy
from libs.decisioning.reward_model import RewardModelConfig, cross_fit
from libs.decisioning.spec import (
    Action,
    Band,
    EpsilonGreedy,
    PolicySpec,
    PolicySpecError,
    Softmax,
)

__all__ = [
    "Action",
    "Band",
    "EpsilonGreedy",
    "Estimate",
    "EvaluationConfig",
    "GateVerdict",
    "LearnedPolicy",
    "LearningConfig",
    "LoggedDecisions",
    "LogsError",
    "PolicySpec",
    "PolicySpecError",
    "Report",
    "RewardModelConfig",
    "Softmax",
    "check_distribution",
    "cross_fit",
    "distribution",
    "draw",
    "eligible_mask",
    "evaluate",
    "learn_policy",
    "promotion_gate",
    "unit_hash",
]
