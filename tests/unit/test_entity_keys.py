"""Composite entity keys (ADR 0023): the stored encoding, definitions, pushes, events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from libs.sdk.feature_store import to_column
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureView,
    Field,
    Float64,
    Int64,
    PushSource,
    StreamSource,
    String,
    repository_of,
)
from services.feature_store.domain import keys
from services.feature_store.domain.definitions.changes import Applied, checked_plan
from services.feature_store.domain.definitions.read_plan import index_definitions
from services.feature_store.domain.definitions.rules import validate_repository
from services.feature_store.domain.streaming import aggregation as agg
from services.feature_store.domain.streaming.events import EventRejected, parse_event
from services.feature_store.domain.training import label_keys
from services.feature_store.domain.writes import push_rows, row_from_source

FIXED = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Text of any characters, heavy in the separator and the escape (and their doubles).
_PART = st.text() | st.text(alphabet="|\\a") | st.sampled_from(["", "|", "\\", "\\|", "|\\"])
_KEYS = st.integers(min_value=2, max_value=5).flatmap(
    lambda n: st.lists(_PART, min_size=n, max_size=n)
)
CARD = Entity("card_merchant", join_keys=("card_id", "merchant_id"), key_types=(Int64, String))


@FIXED
@given(_KEYS)
def test_a_composite_key_round_trips(parts: list[str]) -> None:
    encoded = keys.encode_key(parts)
    assert keys.decode_key(encoded, len(parts)) == tuple(parts)


@FIXED
@given(_KEYS, _KEYS)
def test_the_encoding_is_injective_for_each_number_of_parts(a: list[str], b: list[str]) -> None:
    if len(a) == len(b) and a != b:
        assert keys.encode_key(a) != keys.encode_key(b)


@FIXED
@given(st.lists(_KEYS, min_size=1))
def test_the_arrow_encoding_is_the_same_text(rows: list[list[str]]) -> None:
    width = len(rows[0])
    rows = [r for r in rows if len(r) == width]
    columns = [pa.chunked_array([[r[i] for r in rows]], pa.string()) for i in range(width)]
    assert keys.encode_key_column(columns).to_pylist() == [keys.encode_key(r) for r in rows]


def test_one_part_is_stored_as_it_is_and_malformed_keys_are_refused() -> None:
    assert keys.encode_key(["a|b\\"]) == "a|b\\"  # keys stored before composite keys
    assert keys.decode_key("a|b\\", 1) == ("a|b\\",)
    assert keys.encode_key(["c|1", "m\\2"]) == "c\\|1|m\\\\2"
    for bad, arity in (("a\\x|b", 2), ("a|b\\", 2), ("a|b|c", 2), ("ab", 2)):
        with pytest.raises(ValueError):
            keys.decode_key(bad, arity)
    assert keys.key_column(("card_id", "merchant_id")) == "card_id:merchant_id"
    assert keys.key_column(("loan_id",)) == "loan_id"


def _view(entity: Entity, source: object, **extra: object) -> FeatureView:
    return FeatureView("spend", entity=entity, source=source, **extra)  # type: ignore[arg-type]


def _checked(*definitions: object) -> m.FeatureRepository:
    return validate_repository(repository_of(list(definitions)), [])


def test_entities_take_several_distinct_join_keys() -> None:
    checked = _checked(CARD)
    entity = checked.entities[0]
    assert keys.join_keys_of(entity) == ("card_id", "merchant_id")
    assert keys.key_types_of(entity) == (m.VALUE_TYPE_INT64, m.VALUE_TYPE_STRING)
    single = _checked(Entity("loan", join_keys=("loan_id",), key_types=(Int64,))).entities[0]
    assert (single.join_key, single.key_type, list(single.join_keys)) == (
        "loan_id",
        m.VALUE_TYPE_INT64,
        [],
    )
    bad = [
        (Entity("e", "a", join_keys=("b", "c")), "not both"),
        (Entity("e", join_keys=("a", "a")), "'a' is defined twice"),
        (Entity("e", join_keys=("a", "b"), key_types=(Int64,)), "one per key"),
        (Entity("e", join_keys=("a", "B")), "join_keys"),
        (Entity("e", join_keys=("a", "b"), key_types=(Int64, Float64)), "STRING or INT64"),
        (Entity("e", "a", key_types=(Int64,)), "a single join_key's type is key_type"),
    ]
    for entity, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            _checked(entity)


def test_sources_name_one_column_or_field_per_key_part() -> None:
    fields = [Field("amount", Float64)]
    _checked(
        CARD, _view(CARD, BatchSource("t", "at", entity_columns=("card", "m")), features=fields)
    )
    stream = StreamSource("pay", "at", entity_fields=("card", "merchant"))
    aggregations = [Aggregation("amount", "sum", timedelta(hours=1), "amount_1h")]
    checked = _checked(CARD, _view(CARD, stream, aggregations=aggregations))
    spec = agg.spec_of(checked.feature_views[0], ("card_id", "merchant_id"))
    assert (spec.entity_field, spec.entity_fields) == ("card", ("card", "merchant"))
    plain = agg.spec_of(checked.feature_views[0], "loan_id")  # a single key keeps its form
    assert plain.entity_fields == ("card", "merchant")
    refused = [
        (BatchSource("t", "at", entity_columns=("card",)), "1 columns for the 2 join keys"),
        (BatchSource("t", "at", entity_column="card"), "name one per key"),
        (StreamSource("pay", "at", entity_field="card"), "name one per key"),
        (StreamSource("pay", "at", entity_fields=("a", "a")), "defined twice"),
    ]
    for source, message in refused:
        extra = {"features": fields} if isinstance(source, BatchSource) else {}
        if isinstance(source, StreamSource):
            extra = {"aggregations": aggregations}
        with pytest.raises(InvalidArgument, match=message):
            _checked(CARD, _view(CARD, source, **extra))


def test_changing_an_entitys_keys_is_blocked() -> None:
    applied = Applied(entities={"card_merchant": _checked(CARD).entities[0]})
    for changed in (
        Entity("card_merchant", join_keys=("merchant_id", "card_id"), key_types=(String, Int64)),
        Entity("card_merchant", join_keys=("card_id", "merchant_id")),  # a part's type
        Entity("card_merchant", join_key="card_id", key_type=Int64),
    ):
        (change,) = checked_plan(repository_of([changed]), applied)
        assert change.change.blocked
        assert "join keys (card_id int64, merchant_id string) ->" in change.change.details[0]
    (same,) = checked_plan(repository_of([CARD]), applied)
    assert same.change.action == m.CHANGE_ACTION_UNCHANGED


def _spend(entity: Entity = CARD) -> m.FeatureView:
    return _checked(
        entity, _view(entity, PushSource(), features=[Field("amount", Float64)])
    ).feature_views[0]


def test_pushes_need_each_key_part_and_nothing_else() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    columns = {
        "card_id": to_column([4111, 4111]),
        "merchant_id": to_column(["m|1", "m\\2"]),
        "event_time": to_column([now, now]),
        "amount": to_column([1.5, 2.5]),
    }
    rows = push_rows(_spend(), ("card_id", "merchant_id"), columns)
    assert [r.entity_key for r in rows] == ["4111|m\\|1", "4111|m\\\\2"]
    with pytest.raises(InvalidArgument, match="needs 'merchant_id'"):
        without = {k: v for k, v in columns.items() if k != "merchant_id"}
        push_rows(_spend(), ("card_id", "merchant_id"), without)
    with pytest.raises(InvalidArgument, match="store_id"):
        push_rows(_spend(), ("card_id", "merchant_id"), {**columns, "store_id": to_column([1, 2])})


def test_batch_rows_and_label_rows_encode_their_parts() -> None:
    record = {"entity_key": ["c|1", "m"], "event_time": datetime(2026, 1, 1, tzinfo=UTC)}
    record |= {"created_time": record["event_time"], "amount": 1.0}
    assert row_from_source(_spend(), record).entity_key == "c\\|1|m"
    table = pa.table(
        {
            "card_id": pa.array([1, 2, None], pa.int64()),
            "merchant_id": ["m|1", "m", "x"],
            "event_time": pa.array([0, 1, 2], pa.timestamp("us")),
        }
    )
    joined = label_keys(table, ["card_id", "merchant_id"], "rows", [("card_id", "merchant_id")])
    assert joined.column("card_id:merchant_id").to_pylist() == ["1|m\\|1", "2|m", None]
    with pytest.raises(InvalidArgument, match="needs a column 'merchant_id'"):
        label_keys(table.drop(["merchant_id"]), ["card_id", "merchant_id"], "rows")


def test_online_plans_read_views_by_their_entitys_keys() -> None:
    checked = _checked(CARD, _view(CARD, PushSource(), features=[Field("amount", Float64)]))
    definitions = index_definitions(
        {
            "entity": list(checked.entities),
            "feature_view": list(checked.feature_views),
            "on_demand_view": [],
            "feature_service": [],
        }
    )
    (read,) = definitions.plan_for_references(["spend:*"]).views
    assert (read.join_keys, read.join_key) == (("card_id", "merchant_id"), "card_id:merchant_id")
    entities = {"card_id": to_column([1, 2]), "merchant_id": to_column(["a|b", "c"])}
    assert keys.request_keys(entities, read.join_keys) == ["1|a\\|b", "2|c"]
    with pytest.raises(InvalidArgument, match="lacks the join key 'merchant_id'"):
        keys.check_key_columns({"card_id": 1}, read.join_keys, "entities")
    with pytest.raises(InvalidArgument, match="has 'store_id', which is not a join key"):
        keys.check_key_columns(
            {"card_id": 1, "merchant_id": 1, "store_id": 1}, read.join_keys, "entities"
        )
    with pytest.raises(InvalidArgument, match="NUL"):
        keys.request_keys({**entities, "merchant_id": to_column(["a\x00", "b"])}, read.join_keys)


def test_stream_events_key_by_every_part() -> None:
    spec = agg.StreamViewSpec(
        "v",
        1,
        "s",
        "card",
        "at",
        1_000_000,
        60_000_000,
        (agg.WindowAggregation("n", agg.COUNT, "", 60_000_000),),
        entity_fields=("card", "merchant"),
    )
    event = parse_event(
        spec, {"card": 4111, "merchant": "m|1", "at": 10}, arrival_us=10_000_000, sequence=1
    )
    assert event.entity_key == "4111|m\\|1"
    with pytest.raises(EventRejected, match="'merchant' is missing"):
        parse_event(spec, {"card": 4111, "at": 10}, arrival_us=10_000_000, sequence=1)


@FIXED
@given(st.lists(_KEYS, min_size=1))
def test_request_keys_are_the_encoding_of_each_rows_parts(rows: list[list[str]]) -> None:
    width = len(rows[0])
    rows = [[part or "x" for part in r] for r in rows if len(r) == width]  # keys are non-empty
    rows = [[part.replace("\x00", "") or "x" for part in r] for r in rows]
    names = [f"k{i}" for i in range(width)]
    entities = {name: to_column([r[i] for r in rows]) for i, name in enumerate(names)}
    assert keys.request_keys(entities, names) == [keys.encode_key(r) for r in rows]
