"""Feature definitions as Python: an ML engineer's file, applied with `lathe features apply`.

    from datetime import timedelta
    from libs.sdk.features import *

    loan = Entity("loan", join_key="loan_id")
    loan_terms = FeatureView(
        "loan_terms", entity=loan, ttl=timedelta(days=365),
        source=BatchSource("public.loans", event_time_column="issued_at",
                           created_time_column="ingested_at"),
        features=[Field("interest_rate", Float64, [Range(0, 40)]), Field("term", Int64)],
    )
    payments = FeatureView(
        "payments", entity=loan, source=StreamSource("payments", event_time_field="paid_at"),
        aggregations=[Aggregation("amount", "sum", timedelta(days=7), "amount_sum_7d")],
    )

    @on_demand_feature_view(inputs=["loan_terms:interest_rate"],
                            request_fields=[Field("requested_amount", Float64)],
                            features=[Field("monthly_interest", Float64)])
    def monthly_interest(row):
        rate = row["loan_terms:interest_rate"]
        return {"monthly_interest": row["requested_amount"] * rate / 1200}

    underwriting = FeatureService("underwriting", features=["loan_terms:*", "monthly_interest:*"])

Everything declared at module level is collected by ``load_repository(path)``.
Definitions are plain values: the server validates them and says what to fix.
"""

from __future__ import annotations

import inspect
import runpy
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration

from lathe.feature_store.v1 import message_pb2 as m

Bool = m.VALUE_TYPE_BOOL
Int64 = m.VALUE_TYPE_INT64
Float64 = m.VALUE_TYPE_FLOAT64
String = m.VALUE_TYPE_STRING
Timestamp = m.VALUE_TYPE_TIMESTAMP
Int64List = m.VALUE_TYPE_INT64_LIST
Float64List = m.VALUE_TYPE_FLOAT64_LIST
"""Also the type of embeddings."""
StringList = m.VALUE_TYPE_STRING_LIST
BoolList = m.VALUE_TYPE_BOOL_LIST

_FUNCTIONS = {
    "count": m.AGGREGATION_FUNCTION_COUNT,
    "sum": m.AGGREGATION_FUNCTION_SUM,
    "mean": m.AGGREGATION_FUNCTION_MEAN,
    "min": m.AGGREGATION_FUNCTION_MIN,
    "max": m.AGGREGATION_FUNCTION_MAX,
    "last": m.AGGREGATION_FUNCTION_LAST,
    "stddev": m.AGGREGATION_FUNCTION_STDDEV,
    "variance": m.AGGREGATION_FUNCTION_VARIANCE,
    "stddev_pop": m.AGGREGATION_FUNCTION_STDDEV_POP,
    "variance_pop": m.AGGREGATION_FUNCTION_VARIANCE_POP,
    "count_distinct": m.AGGREGATION_FUNCTION_COUNT_DISTINCT,
    "percentile": m.AGGREGATION_FUNCTION_PERCENTILE,
    "first": m.AGGREGATION_FUNCTION_FIRST,
    "last_n": m.AGGREGATION_FUNCTION_LAST_N,
    "first_n": m.AGGREGATION_FUNCTION_FIRST_N,
}

__all__ = [
    "Aggregation",
    "AllowedValues",
    "BatchSource",
    "Bool",
    "BoolList",
    "Entity",
    "FeatureService",
    "FeatureView",
    "Field",
    "Float64",
    "Float64List",
    "Int64",
    "Int64List",
    "Length",
    "NotNull",
    "PushSource",
    "Range",
    "StreamSource",
    "String",
    "StringList",
    "Timestamp",
    "load_repository",
    "on_demand_feature_view",
]


def _duration(value: timedelta | None) -> Duration | None:
    if value is None:
        return None
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


@dataclass(frozen=True)
class NotNull:
    def to_proto(self) -> m.Expectation:
        return m.Expectation(not_null=m.NotNull())


@dataclass(frozen=True)
class Range:
    min: float | None = None
    max: float | None = None

    def to_proto(self) -> m.Expectation:
        return m.Expectation(range=m.Range(min=self.min, max=self.max))


@dataclass(frozen=True)
class Length:
    """Bounds (inclusive) on a list feature's length; None is open. Null lists pass."""

    min: int | None = None
    max: int | None = None

    def to_proto(self) -> m.Expectation:
        return m.Expectation(length=m.LengthBounds(min=self.min, max=self.max))


@dataclass(frozen=True)
class AllowedValues:
    values: Sequence[bool | int | float | str]

    def to_proto(self) -> m.Expectation:
        return m.Expectation(
            allowed_values=m.AllowedValues(values=[_value(v) for v in self.values])
        )


def _value(obj: bool | int | float | str) -> m.Value:
    if isinstance(obj, bool):
        return m.Value(bool_value=obj)
    if isinstance(obj, int):
        return m.Value(int64_value=obj)
    if isinstance(obj, float):
        return m.Value(float64_value=obj)
    return m.Value(string_value=obj)


Expectation = NotNull | Range | AllowedValues


@dataclass(frozen=True)
class Field:
    name: str
    type: int
    """Bool, Int64, Float64, String or Timestamp."""
    expectations: Sequence[Expectation] = ()
    description: str = ""

    def to_proto(self) -> m.Field:
        return m.Field(
            name=self.name,
            type=self.type,  # type: ignore[arg-type]
            expectations=[e.to_proto() for e in self.expectations],
            description=self.description,
        )


@dataclass(frozen=True)
class Entity:
    """What features describe, keyed by one join key (``Entity("loan", "loan_id")``) or by
    several, a composite key::

        card_merchant = Entity("card_merchant", join_keys=("card_id", "merchant_id"))

    Reads and writes of a composite key's views name every part: ``entities={"card_id":
    [...], "merchant_id": [...]}`` online, one column per part in pushes and label rows.
    """

    name: str
    join_key: str = ""
    """The one join key (or set ``join_keys``)."""
    key_type: int = String
    """String or Int64: the key's type (every part's, unless ``key_types`` says)."""
    description: str = ""
    join_keys: Sequence[str] = ()
    """A composite key: its parts' names, in order."""
    key_types: Sequence[int] = ()
    """Each part's type, one per ``join_keys`` entry (empty: ``key_type`` for all)."""

    def to_proto(self) -> m.Entity:
        return m.Entity(
            name=self.name,
            join_key=self.join_key,
            key_type=self.key_type,  # type: ignore[arg-type]
            description=self.description,
            join_keys=list(self.join_keys),
            key_types=list(self.key_types),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class BatchSource:
    """A Postgres table, or one read-only SELECT, the feature store materializes from.

    The table (or the query's result) must have the entity column, a ``timestamptz``
    event-time column (and created-time column, if named) and a column per feature whose
    type the feature's declared type holds exactly (e.g. Int64: ``bigint``; Float64:
    ``double precision`` or ``numeric(p, s)`` with p <= 15, not plain ``numeric``);
    otherwise ApplyDefinitions answers FAILED_PRECONDITION naming the column. A query is
    checked by Postgres at apply — one SELECT, no writes (also none in WITH or by a
    function it calls), no FOR UPDATE/SHARE, no SELECT ... INTO — and each page of a
    materialization runs read-only within 60 s::

        BatchSource(
            query="SELECT l.loan_id, l.issued_at, r.rate AS apr "
            "FROM loans l JOIN rates r USING (grade)",
            event_time_column="issued_at",
            field_mapping={"apr": "interest_rate"},
        )
    """

    table: str = ""
    """``table`` or ``schema.table`` (or set ``query``)."""
    event_time_column: str = ""
    """When each row's values were true."""
    created_time_column: str = ""
    """When each row became known (empty: at its event time); materialization reads rows
    in this order and continues after the latest it read."""
    entity_column: str = ""
    """The column holding the entity key (empty: the entity's join key)."""
    query: str = ""
    """Instead of ``table``: one read-only SELECT whose result plays the table's part."""
    field_mapping: dict[str, str] = field(default_factory=dict)
    """Source column -> feature name, for features whose column is named differently."""
    entity_columns: Sequence[str] = ()
    """A composite key: the column of each part, in join-key order (empty: the join keys'
    own names)."""


@dataclass(frozen=True)
class StreamSource:
    source: str
    """Events arrive on the NATS subject lathe.ingest.<source>, as JSON objects."""
    event_time_field: str
    entity_field: str = ""
    """The field holding the entity key (empty: the entity's join key)."""
    entity_fields: Sequence[str] = ()
    """A composite key: the field of each part, in join-key order (empty: the join keys'
    own names)."""


@dataclass(frozen=True)
class PushSource:
    pass


@dataclass(frozen=True)
class Aggregation:
    """``function(column)`` over a sliding window of a stream source's events, e.g.
    ``Aggregation("amount", "percentile", timedelta(days=7), "amount_p99_7d", percentile=99)``.

    Windows are relative to the read time; ``offset`` moves the window's end back
    ("30 days ending 7 days ago": ``window=timedelta(days=30), offset=timedelta(days=7)``);
    ``lifetime=True`` (with ``window=None``) takes every event up to the read time.
    """

    column: str
    """The event field (ignored by count)."""
    function: str
    """count, sum, mean, min, max, last; stddev and variance (sample, n - 1), stddev_pop
    and variance_pop (population, n); count_distinct (exact up to 128 values, then a CPC
    sketch: ~1.5% relative standard error); percentile (exact up to 64 values, then
    within 1% of the exact value); first, last_n, first_n (sequences, ADR 0021: lists
    oldest first)."""
    window: timedelta | None
    """A multiple of the view's tile size; None for a lifetime aggregation."""
    name: str
    """The feature's name."""
    percentile: float = 0.0
    """percentile only: which one, 0-100 (e.g. 99.9)."""
    offset: timedelta | None = None
    """The window ends this long before the read time (a multiple of the tile size)."""
    lifetime: bool = False
    """Every event up to the read time (no window, no offset)."""
    n: int = 0
    """last_n / first_n: how many events (1 to 1000)."""
    value_type: int = 0
    """first / last_n / first_n over ``column``: the field's type (Int64, Float64, String
    or Bool; default Float64)."""
    columns: dict[str, int] = field(default_factory=dict)
    """last_n / first_n over several fields as parallel lists: field -> type, in order
    (``column`` empty). Features ``<name>__<field>`` and ``<name>__event_time``."""

    def to_proto(self) -> m.Aggregation:
        if self.function not in _FUNCTIONS:
            raise ValueError(
                f"aggregation {self.name!r}: function must be one of {sorted(_FUNCTIONS)}"
            )
        return m.Aggregation(
            column=self.column,
            function=_FUNCTIONS[self.function],  # type: ignore[arg-type]
            window=_duration(self.window),
            name=self.name,
            percentile=self.percentile,
            offset=_duration(self.offset),
            lifetime=self.lifetime,
            n=self.n,
            value_type=self.value_type,  # type: ignore[arg-type]
            columns=list(self.columns),
            column_types=list(self.columns.values()),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: Entity
    source: BatchSource | StreamSource | PushSource
    features: Sequence[Field] = ()
    aggregations: Sequence[Aggregation] = ()
    ttl: timedelta | None = None
    version: int = 1
    tile_size: timedelta | None = None
    allowed_lateness: timedelta | None = None
    quarantine_violations: bool = False
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_proto(self) -> m.FeatureView:
        view = m.FeatureView(
            name=self.name,
            version=self.version,
            entity=self.entity.name,
            features=[f.to_proto() for f in self.features],
            ttl=_duration(self.ttl),
            aggregations=[a.to_proto() for a in self.aggregations],
            tile_size=_duration(self.tile_size),
            allowed_lateness=_duration(self.allowed_lateness),
            on_violation=m.VIOLATION_POLICY_QUARANTINE
            if self.quarantine_violations
            else m.VIOLATION_POLICY_KEEP,
            description=self.description,
            owner=self.owner,
            tags=self.tags,
        )
        match self.source:
            case BatchSource():
                view.batch_source.CopyFrom(m.BatchSource(**self.source.__dict__))
            case StreamSource():
                view.stream_source.CopyFrom(
                    m.StreamSource(format=m.EVENT_FORMAT_JSON, **self.source.__dict__)
                )
            case PushSource():
                view.push_source.SetInParent()
        return view


@dataclass(frozen=True)
class OnDemandFeatureView:
    name: str
    function: Callable[[dict[str, Any]], dict[str, Any]]
    inputs: Sequence[str]
    request_fields: Sequence[Field]
    features: Sequence[Field]
    version: int = 1
    description: str = ""

    def to_proto(self) -> m.OnDemandFeatureView:
        if self.function.__code__.co_freevars:
            raise ValueError(
                f"on-demand view {self.name!r}: the function uses variables from around it "
                f"({', '.join(self.function.__code__.co_freevars)}); it is shipped as source "
                "and runs on its own, so it may use only its row argument and `math`"
            )
        source = textwrap.dedent(inspect.getsource(self.function))
        lines = source.splitlines()
        while lines and lines[0].lstrip().startswith("@"):  # the decorator itself
            lines.pop(0)
            while lines and not lines[0].lstrip().startswith("def "):
                lines.pop(0)  # a decorator call spanning several lines
        return m.OnDemandFeatureView(
            name=self.name,
            version=self.version,
            inputs=list(self.inputs),
            request_fields=[f.to_proto() for f in self.request_fields],
            features=[f.to_proto() for f in self.features],
            source_code="\n".join(lines) + "\n",
            function_name=self.function.__name__,
            description=self.description,
        )


def on_demand_feature_view(
    *,
    inputs: Sequence[str],
    features: Sequence[Field],
    request_fields: Sequence[Field] = (),
    version: int = 1,
    name: str | None = None,
) -> Callable[[Callable[[dict[str, Any]], dict[str, Any]]], OnDemandFeatureView]:
    """Declare ``def f(row: dict) -> dict`` as an on-demand view (it may use only ``math``)."""

    def declare(function: Callable[[dict[str, Any]], dict[str, Any]]) -> OnDemandFeatureView:
        return OnDemandFeatureView(
            name or function.__name__, function, inputs, request_fields, features, version
        )

    return declare


@dataclass(frozen=True)
class FeatureService:
    name: str
    features: Sequence[str]
    """"view:feature" or "view:*"."""
    version: int = 1
    description: str = ""
    owner: str = ""

    def to_proto(self) -> m.FeatureService:
        return m.FeatureService(
            name=self.name,
            version=self.version,
            features=list(self.features),
            description=self.description,
            owner=self.owner,
        )


def repository_of(objects: Sequence[object]) -> m.FeatureRepository:
    """The repository message declaring ``objects`` (entities first, in declaration order)."""
    repository = m.FeatureRepository()
    entities: dict[str, m.Entity] = {}
    for obj in objects:
        match obj:
            case Entity():
                entities.setdefault(obj.name, obj.to_proto())
            case FeatureView():
                repository.feature_views.append(obj.to_proto())
                entities.setdefault(obj.entity.name, obj.entity.to_proto())
            case OnDemandFeatureView():
                repository.on_demand_views.append(obj.to_proto())
            case FeatureService():
                repository.feature_services.append(obj.to_proto())
    repository.entities.extend(entities.values())
    return repository


def load_repository(path: Path) -> m.FeatureRepository:
    """Run a definitions file and collect what it declares at module level."""
    namespace = runpy.run_path(str(path), run_name=f"lathe_definitions.{path.stem}")
    kinds = (Entity, FeatureView, OnDemandFeatureView, FeatureService)
    return repository_of([value for value in namespace.values() if isinstance(value, kinds)])
