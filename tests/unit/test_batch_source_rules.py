"""Whether a batch source table can feed its view exactly (domain/definitions/sources.py)."""

from __future__ import annotations

import pytest

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.definitions.sources import (
    SourceColumn,
    lossless,
    source_problems,
)

INT64, FLOAT64, STRING, BOOL, TIMESTAMP = (
    m.VALUE_TYPE_INT64,
    m.VALUE_TYPE_FLOAT64,
    m.VALUE_TYPE_STRING,
    m.VALUE_TYPE_BOOL,
    m.VALUE_TYPE_TIMESTAMP,
)


def _numeric(precision: int | None, scale: int | None) -> SourceColumn:
    shown = "numeric" if precision is None else f"numeric({precision},{scale})"
    return SourceColumn("x", "numeric", shown, precision, scale)


@pytest.mark.parametrize(
    ("column", "declared", "exact"),
    [
        (SourceColumn("x", "int8", "bigint"), INT64, True),
        (SourceColumn("x", "int8", "bigint"), FLOAT64, False),  # 2^53 + 1
        (SourceColumn("x", "int4", "integer"), FLOAT64, True),
        (SourceColumn("x", "float4", "real"), FLOAT64, True),
        (SourceColumn("x", "float8", "double precision"), INT64, False),
        (_numeric(None, None), INT64, False),
        (_numeric(None, None), FLOAT64, False),
        (_numeric(18, 0), INT64, True),
        (_numeric(19, 0), INT64, False),
        (_numeric(10, 2), INT64, False),
        (_numeric(15, 4), FLOAT64, True),
        (_numeric(16, 4), FLOAT64, False),
        (SourceColumn("x", "text", "text"), STRING, True),
        (SourceColumn("x", "varchar", "character varying(8)"), STRING, True),
        (SourceColumn("x", "text", "text"), INT64, False),
        (SourceColumn("x", "bool", "boolean"), BOOL, True),
        (SourceColumn("x", "int4", "integer"), BOOL, False),
        (SourceColumn("x", "timestamptz", "timestamp with time zone"), TIMESTAMP, True),
        (SourceColumn("x", "timestamp", "timestamp without time zone"), TIMESTAMP, False),
        (SourceColumn("x", "date", "date"), TIMESTAMP, False),
    ],
)
def test_only_types_that_hold_every_value_exactly_feed_a_feature(
    column: SourceColumn, declared: int, exact: bool
) -> None:
    assert lossless(column, declared) is exact


def _view(**source: str) -> m.FeatureView:
    return m.FeatureView(
        name="terms",
        entity="loan",
        batch_source=m.BatchSource(table="public.loans", event_time_column="at", **source),
        features=[m.Field(name="rate", type=FLOAT64)],
    )


LOAN = m.Entity(name="loan", join_key="loan_id", key_type=STRING)
GOOD = {
    "loan_id": SourceColumn("loan_id", "text", "text"),
    "at": SourceColumn("at", "timestamptz", "timestamp with time zone"),
    "rate": SourceColumn("rate", "numeric", "numeric(10,2)", 10, 2),
}


def test_problems_name_the_column_and_both_types() -> None:
    assert source_problems(_view(), LOAN, GOOD) == []
    assert source_problems(_view(), LOAN, None) == [
        "batch source table public.loans does not exist (or cannot be seen)"
    ]
    [missing] = source_problems(_view(created_time_column="known_at"), LOAN, GOOD)
    assert "'known_at'" in missing and "created-time" in missing
    lossy = {**GOOD, "rate": SourceColumn("rate", "numeric", "numeric", None, None)}
    [problem] = source_problems(_view(), LOAN, lossy)
    assert "'rate'" in problem and "numeric" in problem and "Float64" in problem
    numbered = m.Entity(name="loan", join_key="loan_id", key_type=INT64)
    [key] = source_problems(_view(), numbered, GOOD)
    assert "'loan_id'" in key and "integers" in key
