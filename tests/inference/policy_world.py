"""A credit-line world over the test loans, with a known reward per action, for policies.

Actions: decline, or a line of 0.5x / 1x / 1.5x the requested amount (margins 14/12/10%).
Default probability: a fixed logistic model of the loan's own features (rate, income,
grade), shifted on the logit per tier; reward ``E * margin`` if repaid, ``-E * 0.6`` if
not, ``E = factor * amount / 10,000``. So ``q(x, a)`` is known and any policy's true value
is ``mean_x sum_a pi(a|x) q(x, a)`` exactly (the distribution comes from Decide itself).

The *legacy* logging policy scores by grade only (A/B: the full line, C: half, D:
decline), explored epsilon-greedily; the optimum declines risky applicants of every grade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1.service_pb2_grpc import ModelRegistryStub
from libs.decisioning.export import export_scorer
from libs.decisioning.spec import Action, EpsilonGreedy, Exploration, PolicySpec
from libs.preprocessing import transform
from libs.sdk.model_registry import ArtifactUpload, RegistryClient, VersionSpec
from tests.inference.helpers import Credit

ACTIONS = (
    Action("decline", {"line_factor": 0.0, "margin": 0.0}),
    Action("line_50", {"line_factor": 0.5, "margin": 0.14}),
    Action("line_100", {"line_factor": 1.0, "margin": 0.12}),
    Action("line_150", {"line_factor": 1.5, "margin": 0.10}),
)
TIER_SHIFT = (0.0, -0.4, 0.0, 0.4)
LGD = 0.6
GRADE_SHIFT = {"A": -1.0, "B": -0.3, "C": 0.4, "D": 1.0}
LEGACY = {"A": 2, "B": 2, "C": 1, "D": 0}
"""Grade -> the legacy scorecard's action column."""


@dataclass(frozen=True)
class World:
    credit: Credit
    amounts: np.ndarray
    """The requested amount of each loan (its request feature)."""
    expected: np.ndarray
    """[loans, actions]: q(x, a)."""
    pd: np.ndarray
    """[loans, actions]: default probability."""

    def true_value(self, probabilities: np.ndarray) -> float:
        return float((np.asarray(probabilities) * self.expected).sum(axis=1).mean())

    def reward(self, loan: int, action: int, rng: np.random.Generator) -> float:
        exposure = ACTIONS[action].attributes["line_factor"] * self.amounts[loan] / 10_000
        if exposure == 0.0:
            return 0.0
        repaid = rng.random() >= self.pd[loan, action]
        return exposure * ACTIONS[action].attributes["margin"] if repaid else -exposure * LGD


def make_world(credit: Credit) -> World:
    income_name, rate_name, interest_name, grade_name = credit.features
    rate = np.asarray(credit.train[rate_name], dtype=np.float64)
    income = np.asarray(credit.train[income_name], dtype=np.float64)
    amounts = np.asarray(credit.train[interest_name], dtype=np.float64) * 1200 / rate
    grade = [str(g) for g in credit.train[grade_name]]
    base = (
        -1.6
        + 0.15 * (rate - 15.0)
        - 0.9 * (np.log(income) - 10.5)
        + np.array([GRADE_SHIFT[g] for g in grade])
    )
    pd = 1.0 / (1.0 + np.exp(-(base[:, None] + np.array(TIER_SHIFT)[None, :])))
    factor = np.array([a.attributes["line_factor"] for a in ACTIONS])
    margin = np.array([a.attributes["margin"] for a in ACTIONS])
    exposure = factor[None, :] * amounts[:, None] / 10_000
    expected = exposure * ((1.0 - pd) * margin[None, :] - pd * LGD)
    return World(credit, amounts, expected, pd)


def spec(name: str, exploration: Exploration, salt: str) -> PolicySpec:
    return PolicySpec(name, ACTIONS, exploration, salt)


class _Legacy(nn.Module):
    """Scores by grade alone: a table of 4 scores per grade index."""

    def __init__(self, table: torch.Tensor, grade_column: int) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.grade_column = grade_column

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return self.table[categorical[:, self.grade_column]] + 0.0 * numeric[:, :1]


def legacy_onnx(credit: Credit) -> bytes:
    preprocessing = credit.spec()
    grade = preprocessing.categorical[0]
    table = torch.zeros((grade.cardinality, len(ACTIONS)))
    table[0, 0] = 1.0  # missing or unseen grade: decline
    for i, value in enumerate(grade.vocabulary):
        table[i + 1, LEGACY[value]] = 1.0
    encoded = transform(preprocessing, credit.train)
    exported = export_scorer(
        _Legacy(table, 0), encoded.numeric[:64], encoded.categorical[:64], output="scores"
    )
    return exported.onnx_bytes


async def register_policy(
    registry: ModelRegistryStub,
    credit: Credit,
    model_name: str,
    onnx: bytes,
    policy: PolicySpec | bytes,
) -> int:
    """Register a policy version (``policy``: a spec, or policy.json's exact bytes)."""
    policy_json = policy if isinstance(policy, bytes) else policy.to_json()
    client = RegistryClient(registry, actor="test")
    version = await client.register_version(
        VersionSpec(
            model_name=model_name,
            signature=reg.Signature(
                inputs=[
                    reg.TensorSpec(name=n, dtype=reg.DATA_TYPE_FLOAT64) for n in credit.features
                ],
                outputs=[reg.TensorSpec(name="scores", dtype=reg.DATA_TYPE_FLOAT32, shape=[-1, 4])],
            ),
            lineage=reg.Lineage(
                feature_service=credit.feature_service, feature_service_version="1"
            ),
        ),
        {
            "model.onnx": ArtifactUpload(reg.ARTIFACT_FORMAT_ONNX, content=onnx),
            "preprocessing.json": ArtifactUpload(
                reg.ARTIFACT_FORMAT_JSON, content=credit.spec().to_json()
            ),
            "policy.json": ArtifactUpload(reg.ARTIFACT_FORMAT_JSON, content=policy_json),
        },
    )
    return int(version.version)


def logging_spec(name: str, epsilon: float = 0.3) -> PolicySpec:
    return spec(name, EpsilonGreedy(epsilon), salt=f"{name}-v1")


def assert_close(a: float, b: float, tol: float = 1e-12) -> None:
    assert math.isclose(a, b, abs_tol=tol), (a, b)
