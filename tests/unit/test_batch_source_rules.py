"""Whether a batch source table can feed its view exactly (domain/definitions/sources.py)."""

from __future__ import annotations

import pytest

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.definitions.rules import validate_repository
from services.feature_store.domain.definitions.sources import (
    SourceColumn,
    feature_columns,
    lossless,
    plan_problems,
    query_refusal,
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


# -- query sources and field mappings (ADR 0022) ---------------------------------------------


def test_plans_that_write_or_lock_anywhere_are_named() -> None:
    plan = [
        {
            "Plan": {
                "Node Type": "CTE Scan",
                "Plans": [
                    {"Node Type": "ModifyTable", "Operation": "Delete", "Plans": []},
                    {"Node Type": "Hash Join", "Plans": [{"Node Type": "LockRows"}]},
                ],
            }
        }
    ]
    problems = plan_problems(plan)
    assert len(problems) == 2
    assert "writes rows" in problems[0] and "locks rows" in problems[1]
    assert plan_problems([{"Plan": {"Node Type": "Seq Scan", "Plans": []}}]) == []


@pytest.mark.parametrize(
    ("step", "sqlstate", "message", "said"),
    [
        (
            "explain",
            "42601",
            "cannot insert multiple commands into a prepared statement",
            "more than one statement",
        ),
        ("describe", "0A000", "views must not contain SELECT INTO", "SELECT ... INTO"),
        (
            "describe",
            "0A000",
            "views must not contain data-modifying statements in WITH",
            "writes in a WITH",
        ),
        ("probe", "25006", "cannot execute INSERT in a read-only transaction", "tried to write"),
        ("describe", "42601", 'syntax error at or near ";"', "remove the semicolon"),
        ("explain", "42601", 'syntax error at or near "DROP"', "not one SELECT"),
        ("explain", "parameters", "the server expects 1 argument", "takes parameters"),
        ("explain", "42P01", 'relation "x" does not exist', "cannot run the query"),
    ],
)
def test_refusals_say_what_to_change(step: str, sqlstate: str, message: str, said: str) -> None:
    assert said in query_refusal(step, sqlstate, message)


def _query_view(query: str, mapping: dict[str, str]) -> m.FeatureView:
    return m.FeatureView(
        name="v",
        version=1,
        entity="loan",
        batch_source=m.BatchSource(query=query, event_time_column="at", field_mapping=mapping),
        features=[m.Field(name="rate", type=FLOAT64), m.Field(name="term", type=INT64)],
    )


def test_a_field_mapping_names_the_column_a_feature_reads() -> None:
    view = _query_view("SELECT 1", {"apr": "rate"})
    assert feature_columns(view) == {"rate": "apr", "term": "term"}
    columns = {
        "loan_id": SourceColumn("loan_id", "text", "text"),
        "at": SourceColumn("at", "timestamptz", "timestamp with time zone"),
        "apr": SourceColumn("apr", "numeric", "numeric"),
    }
    entity = m.Entity(name="loan", join_key="loan_id", key_type=STRING)
    assert source_problems(view, entity, columns) == [
        "column 'apr' (feature 'rate') of query is numeric (numeric), which the declared type "
        "Float64 cannot hold exactly: use smallint, integer, real, double precision or "
        "numeric(p, s) with p <= 15 (cast it in a view), or declare another type",
        "batch source query has no column 'term' (a feature)",
    ]


def test_query_sources_are_trimmed_and_bounded_at_validation() -> None:
    entity = m.Entity(name="loan", join_key="loan_id", key_type=STRING)
    repository = m.FeatureRepository(
        entities=[entity], feature_views=[_query_view("SELECT 1 ;  ;\n", {})]
    )
    checked = validate_repository(repository, [])
    assert checked.feature_views[0].batch_source.query == "SELECT 1"
    too_long = m.FeatureRepository(
        entities=[entity], feature_views=[_query_view("SELECT 1" + " " * 20_000 + "+1", {})]
    )
    with pytest.raises(InvalidArgument, match="at most 16384"):
        validate_repository(too_long, [])
