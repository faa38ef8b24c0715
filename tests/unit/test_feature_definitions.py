"""Feature definitions: SDK output, validation, plans and values (pure logic)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from libs.sdk.features import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    PushSource,
    Range,
    StreamSource,
    on_demand_feature_view,
    repository_of,
)
from services.feature_store.domain.definitions.changes import Applied, checked_plan, plan
from services.feature_store.domain.definitions.rules import breaking_changes, validate_repository
from services.feature_store.domain.names import FeatureRef
from services.feature_store.domain.on_demand.runner import compile_on_demand
from services.feature_store.domain.values import coerce
from services.feature_store.domain.writes import IngestRow, check_expectations

LOAN = Entity("loan", join_key="loan_id")


def _view(*fields: Field, version: int = 1, quarantine: bool = False) -> FeatureView:
    return FeatureView(
        "terms",
        entity=LOAN,
        source=PushSource(),
        features=fields,
        version=version,
        quarantine_violations=quarantine,
    )


def test_repository_lists_each_entity_once() -> None:
    repository = repository_of([_view(Field("x", Float64)), LOAN])
    assert [e.name for e in repository.entities] == ["loan"]


def test_stream_views_get_typed_features_from_aggregations() -> None:
    payments = FeatureView(
        "payments",
        entity=LOAN,
        source=StreamSource("payments", event_time_field="at"),
        aggregations=[
            Aggregation("amount", "sum", timedelta(hours=1), "amount_sum_1h"),
            Aggregation("", "count", timedelta(days=1), "payments_1d"),
        ],
    )
    checked = validate_repository(repository_of([payments]), [])
    view = checked.feature_views[0]
    assert [(f.name, f.type) for f in view.features] == [
        ("amount_sum_1h", m.VALUE_TYPE_FLOAT64),
        ("payments_1d", m.VALUE_TYPE_INT64),
    ]
    assert view.tile_size.seconds == 60 and view.allowed_lateness.seconds == 600


def test_appending_a_feature_is_compatible_but_retyping_or_reordering_is_not() -> None:
    base = _view(Field("a", Float64), Field("b", Int64)).to_proto()
    assert (
        breaking_changes(
            base, _view(Field("a", Float64), Field("b", Int64), Field("c", Int64)).to_proto()
        )
        == []
    )
    assert breaking_changes(base, _view(Field("a", Int64), Field("b", Int64)).to_proto()) == [
        "field a: VALUE_TYPE_FLOAT64 -> VALUE_TYPE_INT64"
    ]
    assert breaking_changes(base, _view(Field("b", Int64), Field("a", Float64)).to_proto())


def test_plan_versions_move_one_at_a_time() -> None:
    applied = Applied(views={"terms": _view(Field("a", Float64), version=2).to_proto()})
    for version, action, blocked in [
        (3, m.CHANGE_ACTION_NEW_VERSION, False),
        (5, m.CHANGE_ACTION_NEW_VERSION, True),
        (1, m.CHANGE_ACTION_NEW_VERSION, True),
    ]:
        repository = repository_of([_view(Field("a", Int64), version=version)])
        (change, *_) = [
            c.change for c in plan(repository, applied) if c.change.kind == "feature_view"
        ]
        assert (change.action, change.blocked) == (action, blocked), version


def test_expectations_split_kept_and_quarantined_rows() -> None:
    view = _view(Field("rate", Float64, [Range(0, 40)]), quarantine=True).to_proto()
    rows = [IngestRow("L1", None, [m.Value(float64_value=v)]) for v in (10.0, 41.0)]  # type: ignore[arg-type]

    kept, held, counts = check_expectations(view, rows)

    assert [r.entity_key for r in kept] == ["L1"] and len(held) == 1
    assert counts == {"rate: range[0, 40]": 1}


def test_values_are_typed_strictly() -> None:
    assert coerce(m.Value(int64_value=3), m.VALUE_TYPE_FLOAT64, "x").float64_value == 3.0
    with pytest.raises(InvalidArgument, match="VALUE_TYPE_STRING value where"):
        coerce(m.Value(string_value="3"), m.VALUE_TYPE_FLOAT64, "x")
    with pytest.raises(InvalidArgument, match="finite"):
        coerce(m.Value(float64_value=float("nan")), m.VALUE_TYPE_FLOAT64, "x")


def test_references_parse() -> None:
    assert FeatureRef.parse("terms@2:rate") == FeatureRef("terms", "rate", 2)
    assert str(FeatureRef.parse("terms:*")) == "terms:*"
    with pytest.raises(InvalidArgument):
        FeatureRef.parse("Terms:rate")


def test_on_demand_code_cannot_import() -> None:
    view = m.OnDemandFeatureView(
        name="sneaky",
        version=1,
        function_name="f",
        source_code="import os\ndef f(row):\n    return {}\n",
    )
    with pytest.raises(InvalidArgument, match="does not load"):
        compile_on_demand(view)


def test_on_demand_functions_may_not_capture_variables() -> None:
    factor = 2.0

    @on_demand_feature_view(inputs=["v:x"], features=[Field("y", Float64)])
    def doubled(row: dict) -> dict:
        return {"y": row["v:x"] * factor}

    with pytest.raises(ValueError, match="factor"):
        doubled.to_proto()


def test_a_feature_service_selects_each_feature_once() -> None:
    # Twice-selected features were two columns of one name in a training set: INTERNAL.
    view = _view(Field("x", Float64), Field("y", Float64))
    for features in (["terms:*", "terms:x"], ["terms:y", "terms:y"]):
        repository = repository_of([view, LOAN, FeatureService("scoring", features)])
        with pytest.raises(InvalidArgument, match="more than once"):
            checked_plan(repository, Applied())
    repository = repository_of([view, LOAN, FeatureService("scoring", ["terms:x", "terms:y"])])
    kinds = [c.change.kind for c in checked_plan(repository, Applied())]
    assert "feature_service" in kinds
