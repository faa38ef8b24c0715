"""Rows being written to a view (pure logic): their shape, typing and expectations.

Every path that brings values in (PushFeatures, materialization, stream aggregation)
hands ``app/writes/writer.py`` ``IngestRow``s; what is here turns each source's input
into them and decides which rows are kept, quarantined and served as the latest.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import FailedPrecondition, InvalidArgument
from services.feature_store.domain.keys import encode_key, request_keys
from services.feature_store.domain.times import utc
from services.feature_store.domain.values import (
    coerce,
    describe,
    from_python,
    violated,
)

MAX_PUSH_ROWS = 100_000


@dataclass(frozen=True)
class IngestRow:
    """One row of feature values for one entity, ready to be written."""

    entity_key: str
    """The entity's key as stored (text; INT64 keys by their decimal form)."""
    event_time: datetime
    """When the values were true."""
    values: Sequence[m.Value]
    """In the view's feature order (already typed)."""
    created_time: datetime | None = None
    """When the values became known (None: when they are written)."""


@dataclass
class IngestResult:
    """What a write did."""

    written: int = 0
    """Rows stored (offline log and, if newest, online)."""
    quarantined: int = 0
    """Rows kept aside for breaking an expectation of a QUARANTINE view."""
    violations: Counter[str] = field(default_factory=Counter)
    """"feature: rule" -> how many rows broke it."""


def check_expectations(
    view: m.FeatureView, rows: Sequence[IngestRow]
) -> tuple[list[IngestRow], list[tuple[IngestRow, list[str]]], Counter[str]]:
    """Split rows into kept and quarantined (by the view's policy), counting violations."""
    quarantine = view.on_violation == m.VIOLATION_POLICY_QUARANTINE
    rules = [
        (index, f"{feature.name}: {describe(expectation)}", expectation)
        for index, feature in enumerate(view.features)
        for expectation in feature.expectations
    ]
    kept, held, counts = [], [], Counter[str]()
    for row in rows:
        broken = [label for index, label, rule in rules if violated(rule, row.values[index])]
        counts.update(broken)
        if broken and quarantine:
            held.append((row, broken))
        else:
            kept.append(row)
    return kept, held, counts


def _order(row: IngestRow, default_created: datetime) -> tuple[datetime, datetime]:
    return row.event_time, row.created_time or default_created


def latest_by_entity(rows: Sequence[IngestRow], created_time: datetime) -> dict[str, IngestRow]:
    """Each entity's row with the greatest (event time, created time) (rows without a
    created time count as ``created_time``)."""
    latest: dict[str, IngestRow] = {}
    for row in rows:
        current = latest.get(row.entity_key)
        if current is None or _order(current, created_time) <= _order(row, created_time):
            latest[row.entity_key] = row
    return latest


@dataclass(frozen=True)
class OnlineRows:
    """What a write changes online: rows already true, and rows of the future."""

    current: dict[str, IngestRow]
    """Per entity, the latest row whose event time has come (the online store keeps it
    if it is newer than the one it holds)."""
    pending: list[IngestRow]
    """Rows whose event time is still ahead, one per (entity, event time): the latest
    known. Each becomes the answer when its time comes (ADR 0019)."""


def online_rows(rows: Sequence[IngestRow], created_time: datetime) -> OnlineRows:
    """Split written rows at ``created_time`` (the write's clock, which also stands for
    rows without a created time): a row of the future must not be served before its
    event time, nor hide the rows true until then."""
    now: list[IngestRow] = []
    ahead: dict[tuple[str, datetime], IngestRow] = {}
    for row in rows:
        if row.event_time <= created_time:
            now.append(row)
            continue
        key = (row.entity_key, row.event_time)
        kept = ahead.get(key)
        if kept is None or _order(kept, created_time) <= _order(row, created_time):
            ahead[key] = row
    return OnlineRows(latest_by_entity(now, created_time), list(ahead.values()))


def push_rows(
    view: m.FeatureView, join_keys: str | Sequence[str], columns: Mapping[str, m.RepeatedValue]
) -> list[IngestRow]:
    """PushFeatures columns as rows of the view: typed, one per row, checked.
    ``join_keys``: the view's entity's join key, or keys (a composite key: a column per
    part, ADR 0023)."""
    keys = (join_keys,) if isinstance(join_keys, str) else tuple(join_keys)
    features = {f.name: (i, f.type) for i, f in enumerate(view.features)}
    unknown = set(columns) - set(features) - {*keys, "event_time"}
    if unknown:
        raise InvalidArgument(
            f"columns {sorted(unknown)} are not features of {view.name!r} nor its join keys "
            f"{list(keys)}; it has {sorted(features)}"
        )
    for required in (*keys, "event_time"):
        if required not in columns:
            raise InvalidArgument(f"columns needs {required!r}")
    count = len(columns[keys[0]].values)
    if any(len(c.values) != count for c in columns.values()):
        raise InvalidArgument("every column needs the same number of values (one per row)")
    if not 0 < count <= MAX_PUSH_ROWS:
        raise InvalidArgument(f"push 1 to {MAX_PUSH_ROWS} rows per call, not {count}")
    stored_keys = request_keys(columns, keys)
    rows = []
    for r in range(count):
        stamp = columns["event_time"].values[r]
        if stamp.WhichOneof("kind") != "timestamp_value":
            raise InvalidArgument(f"event_time of row {r} must be a timestamp")
        values = [m.Value() for _ in view.features]
        for name, (index, value_type) in features.items():
            if name in columns:
                values[index] = coerce(columns[name].values[r], value_type, f"{name} of row {r}")
        rows.append(
            IngestRow(
                entity_key=stored_keys[r],
                event_time=stamp.timestamp_value.ToDatetime(tzinfo=UTC),
                values=values,
            )
        )
    return rows


def row_from_source(view: m.FeatureView, record: Mapping[str, Any]) -> IngestRow:
    """A batch-source row (store/sources.py's columns) as a typed row of the view;
    FailedPrecondition when a value does not fit its feature's type."""
    values = []
    for feature in view.features:
        raw = record[feature.name]
        if isinstance(raw, Decimal):
            raw = int(raw) if feature.type == m.VALUE_TYPE_INT64 else float(raw)
        try:
            values.append(from_python(raw, feature.type, f"source column {feature.name!r}"))
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"the batch source of {view.name!r} does not match its definition: {exc}"
            ) from exc
    key = record["entity_key"]  # text, or a composite key's parts (store/sources.py)
    return IngestRow(
        entity_key=key if isinstance(key, str) else encode_key(key),
        event_time=utc(record["event_time"]),
        values=values,
        created_time=utc(record["created_time"]),
    )


@dataclass
class RunningStats:
    """Running count / nulls / mean / min / max of one feature."""

    count: int = 0
    """Values seen (nulls excluded)."""
    nulls: int = 0
    total: float = 0.0
    """Their sum (the mean is total / count)."""
    low: float = math.inf
    """The smallest value (inf before the first)."""
    high: float = -math.inf
    """The largest value (-inf before the first)."""

    def add(self, value: object) -> None:
        """A number, or a list (counted by its length, ADR 0021)."""
        if value is None:
            self.nulls += 1
            return
        number = float(len(value)) if isinstance(value, list) else float(value)  # type: ignore[arg-type]
        self.count += 1
        self.total += number
        self.low, self.high = min(self.low, number), max(self.high, number)
