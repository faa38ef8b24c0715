"""Typed feature values: checking, converting and comparing them (pure logic)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.times import utc

_KIND_TYPES = {
    "bool_value": m.VALUE_TYPE_BOOL,
    "int64_value": m.VALUE_TYPE_INT64,
    "float64_value": m.VALUE_TYPE_FLOAT64,
    "string_value": m.VALUE_TYPE_STRING,
    "timestamp_value": m.VALUE_TYPE_TIMESTAMP,
}
NULL = m.Value()


def value_type_of(value: m.Value) -> int:
    """The ValueType a value carries (UNSPECIFIED for null)."""
    kind = value.WhichOneof("kind")
    return _KIND_TYPES[kind] if kind else m.VALUE_TYPE_UNSPECIFIED


def to_python(value: m.Value) -> object:
    """None, bool, int, float, str or an aware datetime."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    return getattr(value, kind)


def from_python(obj: object, value_type: int, where: str) -> m.Value:
    """A Value of ``value_type`` from a Python object; InvalidArgument if it does not fit."""
    if obj is None:
        return m.Value()
    try:
        if value_type == m.VALUE_TYPE_BOOL and isinstance(obj, bool):
            return m.Value(bool_value=obj)
        if value_type == m.VALUE_TYPE_INT64 and isinstance(obj, int) and not isinstance(obj, bool):
            return m.Value(int64_value=obj)
        if (
            value_type == m.VALUE_TYPE_FLOAT64
            and isinstance(obj, int | float)
            and not isinstance(obj, bool)
        ):
            if not math.isfinite(float(obj)):
                raise InvalidArgument(f"{where}: {obj} is not a finite number")
            return m.Value(float64_value=float(obj))
        if value_type == m.VALUE_TYPE_STRING and isinstance(obj, str):
            return m.Value(string_value=obj)
        if value_type == m.VALUE_TYPE_TIMESTAMP and isinstance(obj, datetime):
            value = m.Value()
            value.timestamp_value.FromDatetime(utc(obj))
            return value
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(
            f"{where}: {obj!r} does not fit {m.ValueType.Name(value_type)}"
        ) from exc
    raise InvalidArgument(
        f"{where}: {obj!r} ({type(obj).__name__}) is not a {m.ValueType.Name(value_type)}"
    )


def value_of(obj: object, where: str) -> m.Value:
    """The Value a Python object stands for, typed by what it is (as a client sends it:
    ``libs/sdk/feature_store.to_value``); naive datetimes are UTC. For values that reach
    an on-demand function from the caller's label columns, so they go through ``coerce``
    exactly as request data does online."""
    if obj is None:
        return m.Value()
    if isinstance(obj, bool):
        return m.Value(bool_value=obj)
    if isinstance(obj, int):
        if not -(2**63) <= obj < 2**63:
            raise InvalidArgument(f"{where}: {obj} does not fit INT64")
        return m.Value(int64_value=obj)
    if isinstance(obj, float):
        return m.Value(float64_value=obj)
    if isinstance(obj, str):
        return m.Value(string_value=obj)
    if isinstance(obj, datetime):
        value = m.Value()
        value.timestamp_value.FromDatetime(utc(obj))
        return value
    raise InvalidArgument(
        f"{where}: a {type(obj).__name__} value; send bool, integer, float, string or "
        "timestamp columns"
    )


def coerce(value: m.Value, value_type: int, where: str) -> m.Value:
    """``value`` if it is null or of ``value_type`` (ints are accepted for floats)."""
    actual = value_type_of(value)
    if actual in (m.VALUE_TYPE_UNSPECIFIED, value_type):
        if actual == m.VALUE_TYPE_FLOAT64 and not math.isfinite(value.float64_value):
            raise InvalidArgument(f"{where}: {value.float64_value} is not a finite number")
        return value
    if actual == m.VALUE_TYPE_INT64 and value_type == m.VALUE_TYPE_FLOAT64:
        return m.Value(float64_value=float(value.int64_value))
    raise InvalidArgument(
        f"{where}: a {m.ValueType.Name(actual)} value where "
        f"{m.ValueType.Name(value_type)} is declared"
    )


def violated(expectation: m.Expectation, value: m.Value) -> bool:
    """Whether ``value`` breaks ``expectation``."""
    rule = expectation.WhichOneof("rule")
    obj = to_python(value)
    if rule == "not_null":
        return obj is None
    if obj is None:
        return False
    if rule == "range":
        bounds = expectation.range
        number = float(obj)  # type: ignore[arg-type]
        return (bounds.HasField("min") and number < bounds.min) or (
            bounds.HasField("max") and number > bounds.max
        )
    if rule == "allowed_values":
        return value not in list(expectation.allowed_values.values)
    return False


def describe(expectation: m.Expectation) -> str:
    rule = expectation.WhichOneof("rule")
    if rule == "range":
        low = f"{expectation.range.min:g}" if expectation.range.HasField("min") else "-inf"
        high = f"{expectation.range.max:g}" if expectation.range.HasField("max") else "inf"
        return f"range[{low}, {high}]"
    if rule == "allowed_values":
        return "allowed_values"
    return rule or "unknown"


def entity_key(value: m.Value, join_key: str) -> str:
    """Entity keys are stored as text; INT64 keys by their decimal form."""
    kind = value.WhichOneof("kind")
    if kind == "string_value" and value.string_value:
        return value.string_value
    if kind == "int64_value":
        return str(value.int64_value)
    raise InvalidArgument(f"entity key {join_key!r} values must be non-empty strings or int64")


def entity_keys(column: m.RepeatedValue, join_key: str) -> list[str]:
    """``entity_key`` of every value; string keys (the common case) without per-value checks."""
    keys = [value.string_value for value in column.values]
    if all(keys):  # every value is a non-empty string (string_value is "" for other kinds)
        return keys
    return [entity_key(value, join_key) for value in column.values]
