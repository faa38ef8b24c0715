"""The decisioning step's world: credit lines for the Lending Club loans, with a known reward.

Four tiers (``libs.decisioning.simulator.ACTIONS``): decline, or a line of 0.5x, 1x or
1.5x the loan's amount, at margins of 14, 12 and 10%. The world's repayment model is
``libs.decisioning.simulator.build_world``'s: a logistic regression of each loan's *real*
status (late, in grace, charged off) on its origination features, its intercept moved so
that one loan in ``DEFAULT_RATE`` defaults on a 1x line (the data's own 1.8% is that of
loans Lending Club already approved), a larger line defaulting more often. So the
expected reward of every tier for every loan, ``q(x, a)``, is known, in thousands of
dollars per decision, and so is the true value of any policy.

The *legacy* scorecard (the logging policy's scorer) knows only the grade: it scores
each tier by the expected reward under a grade-only repayment model, fitted the same
way. Loans with a debt-to-income above ``DTI_LIMIT`` are not offered the largest line.

Rewards are published as the reward definition ``expected_margin``: a decision's
``q(x, a)`` plus Gaussian noise (sd ``REWARD_NOISE``), as ``tests/inference/
test_policy_loop.py`` does — a realised repay/default draw would need about ten times the
decisions for intervals this narrow (docs/adr/0024).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from libs.cli.demo.data import BAD_STATUSES
from libs.decisioning.simulator import ACTIONS, CreditWorld, build_world

VIEW = "loan_origination"
NUMERIC = (
    "interest_rate",
    "term",
    "loan_amount",
    "installment",
    "annual_income",
    "debt_to_income",
    "inquiries_last_12m",
    "accounts_opened_24m",
    "total_credit_utilized",
)
CATEGORICAL = ("grade", "homeownership")
LEGACY = ("grade",)
DEFAULT_RATE = 0.15
DTI_LIMIT = 30.0
REWARD_NOISE = 0.25
"""Thousands of dollars."""
ACTION_NAMES = tuple(a.name for a in ACTIONS)


def feature(column: str) -> str:
    """The feature service's name of an origination column."""
    return f"{VIEW}:{column}"


async def lending_club_world(conn: asyncpg.Connection, loans: Sequence[str]) -> CreditWorld:
    """The world over ``loans`` (in that order), from ``public.lending_club_applications``
    — the rows the feature store materialized, so the policy's features are these."""
    rows = await conn.fetch(
        f"""SELECT loan_id, loan_status, {", ".join((*NUMERIC, *CATEGORICAL))}
            FROM public.lending_club_applications WHERE loan_id = ANY($1::text[])""",
        list(loans),
    )
    by_loan = {r["loan_id"]: r for r in rows}
    missing = [loan for loan in loans if loan not in by_loan]
    if missing:
        raise RuntimeError(f"{len(missing)} loans are not in lending_club_applications")
    ordered = [by_loan[loan] for loan in loans]
    columns: dict[str, list[object]] = {
        feature(c): [None if r[c] is None else float(r[c]) for r in ordered] for c in NUMERIC
    }
    columns.update({feature(c): [r[c] for r in ordered] for c in CATEGORICAL})
    bad = np.array([r["loan_status"] in BAD_STATUSES for r in ordered])
    amount = np.array([float(r["loan_amount"]) / 1000.0 for r in ordered])
    dti = np.array([r["debt_to_income"] or 0.0 for r in ordered], dtype=np.float64)
    eligible = np.ones((len(ordered), len(ACTIONS)), dtype=bool)
    eligible[dti > DTI_LIMIT, ACTION_NAMES.index("line_150")] = False
    return build_world(
        columns,
        [feature(c) for c in NUMERIC],
        [feature(c) for c in CATEGORICAL],
        bad,
        amount,
        eligible,
        [feature(c) for c in LEGACY],
        default_rate=DEFAULT_RATE,
    )


def eligible_actions(world: CreditWorld, row: int) -> list[str]:
    """The tiers offered to loan ``row`` (all: an empty list, as Decide reads it)."""
    mask = world.eligible[row]
    return [] if mask.all() else [n for n, ok in zip(ACTION_NAMES, mask, strict=True) if ok]


def best_value(world: CreditWorld) -> float:
    """The true value of the best policy: the best eligible tier for every loan."""
    return float(np.where(world.eligible, world.expected_rewards, -np.inf).max(axis=1).mean())


def legacy_onnx(world: CreditWorld) -> bytes:
    """The legacy scorecard as a policy's ``model.onnx``: each grade's expected reward per
    tier per $1,000 asked (decline for a grade it never saw), so the served greedy choice
    among the eligible tiers is exactly the world's legacy one. A table lookup (two
    ``Gather`` nodes) over the policy's inputs, ``numeric`` and ``categorical``."""
    spec = world.preprocessing
    grade = next(i for i, c in enumerate(spec.categorical) if c.name == feature(LEGACY[0]))
    amount = world.exposure[:, ACTION_NAMES.index("line_100")]
    table = np.full((spec.categorical[grade].cardinality, len(ACTIONS)), -1.0, np.float32)
    table[:, 0] = 0.0
    codes = world.categorical[:, grade]
    for code in np.unique(codes):
        row = int(np.flatnonzero(codes == code)[0])
        table[int(code)] = world.legacy_scores[row] / amount[row]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["categorical", "grade_column"], ["grade"], axis=1),
            helper.make_node("Gather", ["table", "grade"], ["scores"], axis=0),
        ],
        "legacy_scorecard",
        [
            helper.make_tensor_value_info(
                "numeric", TensorProto.FLOAT, ["batch", len(spec.numeric)]
            ),
            helper.make_tensor_value_info(
                "categorical", TensorProto.INT64, ["batch", len(spec.categorical)]
            ),
        ],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", len(ACTIONS)])],
        [
            numpy_helper.from_array(np.array(grade, dtype=np.int64), "grade_column"),
            numpy_helper.from_array(table, "table"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def rewards(world: CreditWorld, rows: np.ndarray, actions: np.ndarray, seed: int) -> np.ndarray:
    """The published reward of each decision: its expected margin plus noise."""
    rng = np.random.default_rng(seed)
    return world.expected_rewards[rows, actions] + rng.normal(0.0, REWARD_NOISE, len(rows))
