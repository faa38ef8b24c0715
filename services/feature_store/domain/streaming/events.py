"""Reading raw business events (JSON objects) as a stream view sees them: pure logic.

Streaming ingestion and backfill both go through ``parse_event``, so an event is accepted
or rejected — and for the same reason — whichever path reads it. A rejection never
raises past the caller: the event is counted under its reason and skipped, so one bad
message cannot stop a stream.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.keys import encode_key
from services.feature_store.domain.streaming.aggregation import (
    DISTINCT,
    EXACT,
    MOMENTS,
    QUANTILES,
    SEQUENCE_KINDS,
    StreamEvent,
    StreamViewSpec,
    to_us,
)
from services.feature_store.domain.streaming.sketches import distinct_key
from services.feature_store.domain.values import ELEMENT_TYPES

# Rejection reasons (the ``reason`` column of feature_store.stream_rejections).
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
BAD_SUBJECT = "bad_subject"
MISSING_ENTITY = "missing_entity"
BAD_ENTITY = "bad_entity"
MISSING_EVENT_TIME = "missing_event_time"
BAD_EVENT_TIME = "bad_event_time"
NOT_NUMERIC = "not_numeric"
NOT_SCALAR = "not_scalar"
WRONG_TYPE = "wrong_type"
"""A sequence column's value is not of its declared type ("wrong_type:<field>")."""
BAD_TEXT = "bad_text"
"""A sequence column's string holds a NUL or an unpaired surrogate ("bad_text:<field>"):
states are jsonb, which refuses the first, and UTF-8 cannot carry the second."""
LATE = "late"
FUTURE = "future"

_ZERO = Decimal(0)
MAX_ENTITY_KEY = 1024
"""Longer keys could not be indexed (a btree row holds ~2.7 kB): rejected, not retried."""


@dataclass(frozen=True)
class RawEvent:
    """One business event as the raw-event log keeps it (store/stream_events.py)."""

    event_id: UUID
    """Its id (the log's key with the source: an event is logged once)."""
    stream_sequence: int
    """Its JetStream stream sequence: the last tie-break of ``last``."""
    arrival_time: datetime
    """When JetStream stored it, or when it became known (imported history)."""
    payload: bytes
    """The event as published (a JSON object, if it counts)."""


class EventRejected(Exception):
    """An event a view cannot use; ``reason`` is one of the constants above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def decode_payload(data: bytes) -> dict[str, object]:
    """The event's JSON object; EventRejected if the payload is not one."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise EventRejected(NOT_JSON, f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise EventRejected(
            NOT_OBJECT, f"payload is a JSON {type(payload).__name__}, not an object"
        )
    return payload


def parse_event(
    spec: StreamViewSpec, payload: dict[str, object], *, arrival_us: int, sequence: int
) -> StreamEvent:
    """The event as ``spec`` reads it, or EventRejected saying why it cannot count."""
    if spec.entity_fields:  # a composite key: each part, then the one stored text
        entity = encode_key([_entity_key(payload.get(f), f) for f in spec.entity_fields])
    else:
        entity = _entity_key(payload.get(spec.entity_field), spec.entity_field)
    event_us = _event_time_us(payload.get(spec.event_time_field), spec.event_time_field)
    delay = arrival_us - event_us
    if delay > spec.lateness_us:
        raise EventRejected(
            LATE, f"arrived {delay / 1e6:.3f}s after its event time; allowed lateness exceeded"
        )
    if -delay > spec.lateness_us:
        # A producer clock far ahead: counting it would put values into windows early.
        raise EventRejected(FUTURE, f"event time is {-delay / 1e6:.3f}s after its arrival")
    values = {}
    for column in spec.columns:
        value = _number(payload.get(column), column)
        if value is not None:
            values[column] = value
    parts: dict[str, object] = {}
    for key in spec.parts:
        kind, column = key.split(":", 1)
        if kind in SEQUENCE_KINDS:
            continue
        if kind == DISTINCT:
            raw = payload.get(column)
            if raw is None:
                continue
            hashed = distinct_key(raw)
            if hashed is None:
                raise EventRejected(
                    f"{NOT_SCALAR}:{column}",
                    f"{column!r} must be a string, a finite number or a boolean to be counted",
                )
            parts[key] = hashed
        elif column in values:
            number = values[column]
            parts[key] = number if kind == MOMENTS else float(number) + 0.0
            assert kind in (MOMENTS, QUANTILES)
    for key, columns, types in spec.sequences:
        kept = _sequence_values(payload, columns, types)
        if kept is not None:
            parts[key] = ((event_us, arrival_us, sequence), kept)
    return StreamEvent(entity, event_us, arrival_us, sequence, values, parts)


_TYPE_NAMES = {
    m.VALUE_TYPE_BOOL: "bool",
    m.VALUE_TYPE_INT64: "int64",
    m.VALUE_TYPE_FLOAT64: "float64",
    m.VALUE_TYPE_STRING: "string",
}


def _sequence_values(
    payload: dict[str, object], columns: tuple[str, ...], types: tuple[int, ...]
) -> tuple[object, ...] | None:
    """The event's values of a sequence's columns, each of its declared type; None when
    one is absent or null (the event is left out of that sequence: parallel lists stay
    of one length, and lists hold no nulls). A value of another type rejects the event."""
    values = []
    for column, kind in zip(columns, types, strict=True):
        raw = payload.get(column)
        if raw is None:
            return None
        value = _typed(raw, kind)
        if value is None:
            raise EventRejected(
                f"{WRONG_TYPE}:{column}",
                f"{column!r} must be a {_TYPE_NAMES.get(kind, kind)}, not {raw!r}",
            )
        if isinstance(value, str) and not _storable(value):
            raise EventRejected(
                f"{BAD_TEXT}:{column}",
                f"{column!r} holds a NUL character or an unpaired surrogate; send UTF-8 text",
            )
        values.append(value)
    return tuple(values)


def _storable(text: str) -> bool:
    """Whether ``text`` can live in a jsonb state and a protobuf string."""
    if text.isascii():
        return "\x00" not in text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _typed(raw: object, kind: int) -> object:
    """``raw`` as the element type ``kind`` (ValueType number), canonical; None if it is not
    one: integers for INT64 (integral floats too), finite numbers for FLOAT64 (-0.0 is 0.0),
    strings for STRING, booleans for BOOL."""
    if isinstance(raw, bool):
        return raw if kind == m.VALUE_TYPE_BOOL else None
    if kind == m.VALUE_TYPE_INT64:
        if isinstance(raw, int) and -(2**63) <= raw < 2**63:
            return raw
        if isinstance(raw, float) and raw.is_integer() and -(2.0**63) <= raw < 2.0**63:
            return int(raw)
        return None
    if kind == m.VALUE_TYPE_FLOAT64:
        if isinstance(raw, int) and abs(raw) < 2**1023:
            return float(raw) + 0.0
        if isinstance(raw, float) and math.isfinite(raw):
            return raw + 0.0
        return None
    if kind == m.VALUE_TYPE_STRING:
        return raw if isinstance(raw, str) else None
    assert kind in ELEMENT_TYPES.values()
    return None


def _entity_key(raw: object, name: str) -> str:
    if raw is None:
        raise EventRejected(MISSING_ENTITY, f"the entity field {name!r} is missing or null")
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ENTITY_KEY:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)  # INT64 keys are stored by their decimal form (as online.entity_key)
    raise EventRejected(
        BAD_ENTITY,
        f"the entity field {name!r} must be an int or a string of 1 to {MAX_ENTITY_KEY} characters",
    )


def _event_time_us(raw: object, name: str) -> int:
    """RFC 3339 text with an offset, or epoch seconds (int or float)."""
    if raw is None:
        raise EventRejected(MISSING_EVENT_TIME, f"the event-time field {name!r} is missing")
    if isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise EventRejected(BAD_EVENT_TIME, f"{name!r}: {raw!r} is not RFC 3339") from exc
        if moment.tzinfo is None:
            raise EventRejected(BAD_EVENT_TIME, f"{name!r}: {raw!r} needs a UTC offset (e.g. Z)")
        return to_us(moment)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw * 1_000_000
    if isinstance(raw, float) and math.isfinite(raw):
        return round(Decimal(repr(raw)) * 1_000_000)
    raise EventRejected(BAD_EVENT_TIME, f"{name!r} must be RFC 3339 text or epoch seconds")


def _number(raw: object, name: str) -> Decimal | None:
    """The exact decimal of a JSON number, canonical (``_canonical``); None when absent or
    null (ignored, as SQL does)."""
    if raw is None:
        return None
    if isinstance(raw, float) and math.isfinite(raw):
        return _canonical(Decimal(repr(raw)))
    if isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) < 2**1023:
        return _canonical(Decimal(raw))
    raise EventRejected(f"{NOT_NUMERIC}:{name}", f"{name!r} must be a finite number, not {raw!r}")


def _canonical(value: Decimal) -> Decimal:
    """One representation per number: 1, 1.0 and 1.00 are ``1``, -0.0 is ``0``. Min and max
    keep the first of equal values, so without this a tile's stored bytes (not its
    values) depended on the order its events came in."""
    return value.normalize(EXACT) if value else _ZERO
