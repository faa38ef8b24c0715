"""Whether a batch source's table can feed its view exactly (pure logic).

Checked when a view is applied (a problem blocks the change: FAILED_PRECONDITION naming
the column) and again when it is materialized (the table may have changed since). A
feature column must hold values its declared type represents exactly: a ``numeric``
2.750 declared Int64 used to be served as 2, a ``bigint`` 2^53 + 1 declared Float64 as
2^53. Time columns must be ``timestamptz`` (a ``timestamp`` would be read in the
session's time zone). The entity column must give the keys online reads use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lathe.feature_store.v1 import message_pb2 as m

_INTEGERS = frozenset({"int2", "int4", "int8"})
_TEXT = frozenset({"text", "varchar", "bpchar"})
_INSTANT = frozenset({"timestamptz"})
_DECLARED = {
    m.VALUE_TYPE_BOOL: "Bool",
    m.VALUE_TYPE_INT64: "Int64",
    m.VALUE_TYPE_FLOAT64: "Float64",
    m.VALUE_TYPE_STRING: "String",
    m.VALUE_TYPE_TIMESTAMP: "Timestamp",
}
_EXACT_DIGITS_INT64 = 18
"""numeric(p, 0) with p <= 18 always fits an int64."""
_EXACT_DIGITS_FLOAT64 = 15
"""A decimal of at most 15 significant digits survives a round trip through a double."""
_ADVICE = {
    m.VALUE_TYPE_BOOL: "boolean",
    m.VALUE_TYPE_INT64: (
        f"smallint, integer, bigint or numeric(p, 0) with p <= {_EXACT_DIGITS_INT64}"
    ),
    m.VALUE_TYPE_FLOAT64: (
        f"smallint, integer, real, double precision or numeric(p, s) with p <= "
        f"{_EXACT_DIGITS_FLOAT64}"
    ),
    m.VALUE_TYPE_STRING: "text, varchar or char",
    m.VALUE_TYPE_TIMESTAMP: "timestamp with time zone",
}


@dataclass(frozen=True)
class SourceColumn:
    """One column of a batch source table, as Postgres describes it."""

    name: str
    type: str
    """The type's internal name (``pg_type.typname``), e.g. ``int8``, ``numeric``."""
    shown: str
    """The type as Postgres writes it, e.g. ``bigint``, ``numeric(10,2)``."""
    precision: int | None = None
    """A numeric's declared precision (None: unconstrained, or not a numeric)."""
    scale: int | None = None


def declared_name(value_type: int) -> str:
    return _DECLARED.get(value_type, m.ValueType.Name(value_type))


def source_problems(
    view: m.FeatureView, entity: m.Entity, columns: Mapping[str, SourceColumn] | None
) -> list[str]:
    """What keeps ``view``'s batch source (``columns``: its table's, None when the table
    does not exist) from feeding it exactly; empty when nothing does."""
    source = view.batch_source
    if columns is None:
        return [f"batch source table {source.table} does not exist (or cannot be seen)"]
    problems = []
    integer_keys = entity.key_type == m.VALUE_TYPE_INT64
    keys = _INTEGERS if integer_keys else _INTEGERS | _TEXT | {"uuid"}
    roles = [
        (
            source.entity_column or entity.join_key,
            "the entity column",
            keys,
            "integers" if integer_keys else "text or integers",
        ),
        (source.event_time_column, "the event-time column", _INSTANT, "timestamp with time zone"),
    ]
    if source.created_time_column:
        roles.append(
            (
                source.created_time_column,
                "the created-time column",
                _INSTANT,
                "timestamp with time zone",
            )
        )
    for name, role, allowed, wanted in roles:
        column = columns.get(name)
        if column is None:
            problems.append(f"batch source {source.table} has no column {name!r} ({role})")
        elif column.type not in allowed:
            problems.append(
                f"column {name!r} of {source.table} ({role}) is {column.shown}; it must be {wanted}"
            )
    for feature in view.features:
        column = columns.get(feature.name)
        if column is None:
            problems.append(
                f"batch source {source.table} has no column {feature.name!r} (a feature)"
            )
        elif not lossless(column, feature.type):
            problems.append(
                f"column {feature.name!r} of {source.table} is {column.shown} ({column.type}), "
                f"which the declared type {declared_name(feature.type)} cannot hold exactly: "
                f"use {_ADVICE[feature.type]} (cast it in a view), or declare another type"
            )
    return problems


def lossless(column: SourceColumn, value_type: int) -> bool:
    """Whether every value of ``column`` is represented exactly by ``value_type``."""
    kind, precision, scale = column.type, column.precision, column.scale
    if value_type == m.VALUE_TYPE_INT64:
        return kind in _INTEGERS or (
            kind == "numeric"
            and precision is not None
            and precision <= _EXACT_DIGITS_INT64
            and scale == 0
        )
    if value_type == m.VALUE_TYPE_FLOAT64:
        return kind in {"int2", "int4", "float4", "float8"} or (
            kind == "numeric" and precision is not None and precision <= _EXACT_DIGITS_FLOAT64
        )
    if value_type == m.VALUE_TYPE_STRING:
        return kind in _TEXT
    if value_type == m.VALUE_TYPE_BOOL:
        return kind == "bool"
    if value_type == m.VALUE_TYPE_TIMESTAMP:
        return kind == "timestamptz"
    return False
