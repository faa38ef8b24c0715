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
    "int64_list_value": m.VALUE_TYPE_INT64_LIST,
    "float64_list_value": m.VALUE_TYPE_FLOAT64_LIST,
    "string_list_value": m.VALUE_TYPE_STRING_LIST,
    "bool_list_value": m.VALUE_TYPE_BOOL_LIST,
}
NULL = m.Value()
ELEMENT_TYPES = {
    m.VALUE_TYPE_INT64_LIST: m.VALUE_TYPE_INT64,
    m.VALUE_TYPE_FLOAT64_LIST: m.VALUE_TYPE_FLOAT64,
    m.VALUE_TYPE_STRING_LIST: m.VALUE_TYPE_STRING,
    m.VALUE_TYPE_BOOL_LIST: m.VALUE_TYPE_BOOL,
}
"""List type -> the type of its elements (ADR 0021: elements are never null)."""
LIST_OF = {element: listed for listed, element in ELEMENT_TYPES.items()}
"""Element type -> its list type."""
_LIST_FIELDS = {
    m.VALUE_TYPE_INT64_LIST: "int64_list_value",
    m.VALUE_TYPE_FLOAT64_LIST: "float64_list_value",
    m.VALUE_TYPE_STRING_LIST: "string_list_value",
    m.VALUE_TYPE_BOOL_LIST: "bool_list_value",
}
_LIST_KINDS = frozenset(_LIST_FIELDS.values())
MAX_LIST_LENGTH = 100_000
"""Elements one list value may hold (a row is served whole: keep lists bounded)."""


def is_list(value_type: int) -> bool:
    """Whether ``value_type`` is one of the list types."""
    return value_type in ELEMENT_TYPES


def list_value(elements: object, list_type: int) -> m.Value:
    """A Value of ``list_type`` holding ``elements`` (already of the element type; an
    empty sequence gives an empty list, not a null)."""
    value = m.Value()
    holder = getattr(value, _LIST_FIELDS[list_type])
    holder.SetInParent()
    holder.values.extend(elements)  # type: ignore[call-overload]
    return value


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
    if kind in _LIST_KINDS:
        return list(getattr(value, kind).values)
    return getattr(value, kind)


def from_python(obj: object, value_type: int, where: str) -> m.Value:
    """A Value of ``value_type`` from a Python object; InvalidArgument if it does not fit.
    A list type takes a list or tuple of non-null elements of its element type."""
    if obj is None:
        return m.Value()
    if is_list(value_type):
        return _list_from_python(obj, value_type, where)
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


def _list_from_python(obj: object, list_type: int, where: str) -> m.Value:
    name = m.ValueType.Name(list_type)
    if not isinstance(obj, list | tuple):
        raise InvalidArgument(f"{where}: {type(obj).__name__} is not a list ({name})")
    if len(obj) > MAX_LIST_LENGTH:
        raise InvalidArgument(
            f"{where}: a list of {len(obj)} elements; at most {MAX_LIST_LENGTH} per value"
        )
    element = ELEMENT_TYPES[list_type]
    checked: list[object] = []
    for index, item in enumerate(obj):
        if item is None:
            raise InvalidArgument(
                f"{where}[{index}]: lists hold no nulls (ADR 0021); leave the element out, "
                "or null the whole value"
            )
        checked.append(to_python(from_python(item, element, f"{where}[{index}]")))
    value = list_value(checked, list_type)
    _check_list(value, list_type, where)
    return value


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
    if isinstance(obj, list | tuple):
        return _list_of(obj, where)
    raise InvalidArgument(
        f"{where}: a {type(obj).__name__} value; send bool, integer, float, string, "
        "timestamp or list columns"
    )


def _list_of(obj: list[object] | tuple[object, ...], where: str) -> m.Value:
    """A list typed by its elements: all bools, all ints, numbers (floats), or strings; an
    empty list is an empty FLOAT64_LIST (``coerce`` gives it any declared list type)."""
    if all(isinstance(x, bool) for x in obj):
        list_type = m.VALUE_TYPE_BOOL_LIST if obj else m.VALUE_TYPE_FLOAT64_LIST
    elif all(isinstance(x, int) and not isinstance(x, bool) for x in obj):
        list_type = m.VALUE_TYPE_INT64_LIST
    elif all(isinstance(x, int | float) and not isinstance(x, bool) for x in obj):
        list_type = m.VALUE_TYPE_FLOAT64_LIST
    elif all(isinstance(x, str) for x in obj):
        list_type = m.VALUE_TYPE_STRING_LIST
    else:
        raise InvalidArgument(
            f"{where}: a list of mixed or unsupported elements; lists hold booleans, integers, "
            "floats or strings, never nulls"
        )
    return _list_from_python(obj, list_type, where)


def coerce(value: m.Value, value_type: int, where: str) -> m.Value:
    """``value`` if it is null or of ``value_type`` (ints are accepted for floats)."""
    actual = value_type_of(value)
    if actual in (m.VALUE_TYPE_UNSPECIFIED, value_type):
        if actual == m.VALUE_TYPE_FLOAT64 and not math.isfinite(value.float64_value):
            raise InvalidArgument(f"{where}: {value.float64_value} is not a finite number")
        if is_list(actual):
            _check_list(value, actual, where)
        return value
    if actual == m.VALUE_TYPE_INT64 and value_type == m.VALUE_TYPE_FLOAT64:
        return m.Value(float64_value=float(value.int64_value))
    if is_list(actual) and is_list(value_type):
        elements = getattr(value, _LIST_FIELDS[actual]).values
        if not elements:  # an empty list of any type is the empty list of the declared one
            return list_value([], value_type)
        if actual == m.VALUE_TYPE_INT64_LIST and value_type == m.VALUE_TYPE_FLOAT64_LIST:
            converted = list_value([float(x) for x in elements], value_type)
            _check_list(converted, value_type, where)
            return converted
    raise InvalidArgument(
        f"{where}: a {m.ValueType.Name(actual)} value where "
        f"{m.ValueType.Name(value_type)} is declared"
    )


def _check_list(value: m.Value, list_type: int, where: str) -> None:
    elements = getattr(value, _LIST_FIELDS[list_type]).values
    if len(elements) > MAX_LIST_LENGTH:
        raise InvalidArgument(
            f"{where}: a list of {len(elements)} elements; at most {MAX_LIST_LENGTH} per value"
        )
    if list_type == m.VALUE_TYPE_FLOAT64_LIST and not all(map(math.isfinite, elements)):
        raise InvalidArgument(f"{where}: the list holds a number that is not finite")
    if list_type == m.VALUE_TYPE_STRING_LIST and any("\x00" in text for text in elements):
        raise InvalidArgument(f"{where}: the list holds a NUL character, which text cannot")


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
        numbers = obj if isinstance(obj, list) else [obj]  # lists: every element
        return any(
            (bounds.HasField("min") and float(n) < bounds.min)  # type: ignore[arg-type]
            or (bounds.HasField("max") and float(n) > bounds.max)  # type: ignore[arg-type]
            for n in numbers
        )
    if rule == "length":
        length = len(obj) if isinstance(obj, list) else 0
        limits = expectation.length
        return (limits.HasField("min") and length < limits.min) or (
            limits.HasField("max") and length > limits.max
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
    if rule == "length":
        low = str(expectation.length.min) if expectation.length.HasField("min") else "0"
        high = str(expectation.length.max) if expectation.length.HasField("max") else "inf"
        return f"length[{low}, {high}]"
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
