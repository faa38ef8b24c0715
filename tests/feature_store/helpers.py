"""Building feature-store requests in tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from lathe.feature_store.v1 import message_pb2 as m


def suffix() -> str:
    return uuid.uuid4().hex[:8]


def value(obj: object) -> m.Value:
    if obj is None:
        return m.Value()
    if isinstance(obj, bool):
        return m.Value(bool_value=obj)
    if isinstance(obj, int):
        return m.Value(int64_value=obj)
    if isinstance(obj, float):
        return m.Value(float64_value=obj)
    if isinstance(obj, datetime):
        stamped = m.Value()
        stamped.timestamp_value.FromDatetime(obj if obj.tzinfo else obj.replace(tzinfo=UTC))
        return stamped
    return m.Value(string_value=str(obj))


def column(values: Sequence[object]) -> m.RepeatedValue:
    return m.RepeatedValue(values=[value(v) for v in values])


def python(v: m.Value) -> object:
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "timestamp_value":
        return v.timestamp_value.ToDatetime(tzinfo=UTC)
    return getattr(v, kind)
