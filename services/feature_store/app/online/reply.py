"""A GetOnlineFeaturesResponse written as protobuf wire bytes from stored rows.

Selections of whole views (the common case: a feature service) copy pre-encoded parts:
per run of stored views of one entity, the part the replica keeps ready per entity
(``vectors.py``) or each row's fragment (``StoredView.part``). Any other selection
— some features of a view, on-demand features — is assembled value by value. Either way
the reply is never built as Python protobuf objects (see ``wire``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import chain

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument
from services.feature_store.app.online.vectors import Shape, VectorIndex
from services.feature_store.domain.definitions.read_plan import (
    OnDemandColumn,
    OnDemandStep,
    ReadPlan,
    StoredColumn,
)
from services.feature_store.domain.serving import wire
from services.feature_store.domain.serving.rows import ServingRow, StoredView, ViewTables, epoch_us
from services.feature_store.domain.values import to_python

_PRESENT = m.FEATURE_STATUS_PRESENT
_NOT_FOUND = m.FEATURE_STATUS_NOT_FOUND
_EXPIRED = m.FEATURE_STATUS_EXPIRED
_EMPTY: dict[str, ServingRow] = {}
_NONE_READY: Mapping[int, VectorIndex] = {}


def encode(
    plan: ReadPlan,
    keys_by_view: list[list[str]],
    tables: ViewTables,
    request_data: Mapping[str, m.RepeatedValue],
    rows: int,
    now: datetime,
    ready: Mapping[int, VectorIndex] = _NONE_READY,
) -> bytes:
    """The reply for ``rows`` entity rows, as of ``now`` (TTLs).

    ``ready``: indexes the replica keeps for runs of ``ready_runs(plan)``, by the run's
    first view.
    """
    layout = _layout(plan)
    if layout.runs is not None and len(layout.runs) == 1 and 0 in ready:
        results = ready[0].results(keys_by_view[0], tables, now, whole=True)
    elif layout.runs is not None:
        vectors = _whole_views(layout, keys_by_view, tables, now, ready)
        results = list(chain.from_iterable((wire.result_header(len(v)), v) for v in vectors))
    else:
        results = _assembled(
            plan, layout.views, layout.pieces, keys_by_view, tables, request_data, rows, now
        )
    return layout.names + b"".join(results)


@dataclass(frozen=True)
class Run:
    """Consecutive views of a whole-view plan whose reply parts are read together."""

    first: int
    """Index of its first view in ``plan.views``."""
    shape: Shape
    ready: bool
    """Stored views of one join key: their parts can be kept ready per entity."""


def ready_runs(plan: ReadPlan) -> list[Run]:
    """The runs whose parts the replica can keep ready (``vectors.py``): maximal runs
    of stored views with one join key in a selection of whole views without on-demand
    features. Stream views' values depend on the read time and are read per call."""
    return [run for run in _layout(plan).runs or () if run.ready]


@dataclass(frozen=True)
class _Layout:
    """The parts of every reply for one plan that do not depend on the entities."""

    names: bytes
    """The ``feature_names`` fields."""
    pieces: list[_Whole | StoredColumn | OnDemandColumn]
    views: tuple[StoredView, ...]
    """How each view's rows become fragments when the whole view is selected."""
    runs: tuple[Run, ...] | None
    """The views in runs, when every column is part of a whole view, in order (no
    on-demand features): replies are then copied from stored fragments."""


def _layout(plan: ReadPlan) -> _Layout:
    layout = plan.memo.get("online_layout")
    if layout is None:
        pieces = segments(plan)
        whole_views = not plan.steps and all(isinstance(p, _Whole) for p in pieces)
        views = tuple(
            StoredView.of(read.key, len(read.view.features), read.ttl_s) for read in plan.views
        )
        layout = plan.memo["online_layout"] = _Layout(
            names=rr.GetOnlineFeaturesResponse(
                feature_names=plan.feature_names
            ).SerializeToString(),
            pieces=pieces,
            views=views,
            runs=_runs(plan, views) if whole_views else None,
        )
    assert isinstance(layout, _Layout)
    return layout


def _runs(plan: ReadPlan, views: tuple[StoredView, ...]) -> tuple[Run, ...]:
    runs: list[Run] = []
    for index, (read, view) in enumerate(zip(plan.views, views, strict=True)):
        last = runs[-1] if runs else None
        if (
            last is not None
            and last.ready
            and read.stored
            and plan.views[last.first].join_key == read.join_key
        ):
            runs[-1] = Run(last.first, (*last.shape, view), ready=True)
        else:
            runs.append(Run(index, (view,), ready=read.stored))
    return tuple(runs)


def _whole_views(
    layout: _Layout,
    keys_by_view: list[list[str]],
    tables: ViewTables,
    now: datetime,
    ready: Mapping[int, VectorIndex],
) -> list[bytes]:
    """Each row's FeatureVector for a selection of whole views: per run, the ready parts,
    or each view's fragment of its stored (or stream-computed) row."""
    assert layout.runs is not None
    now_us = epoch_us(now)
    columns = []
    for run in layout.runs:
        index = ready.get(run.first)
        if index is not None:
            columns.append(index.results(keys_by_view[run.first], tables, now))
            continue
        for offset, view in enumerate(run.shape):
            stored = tables.get(view.key, _EMPTY).get
            part = view.part
            keys = keys_by_view[run.first + offset]
            columns.append([part(stored(key), now_us)[0] for key in keys])
    if len(columns) == 1:
        return columns[0]
    return [b"".join(parts) for parts in zip(*columns, strict=True)]


def _assembled(
    plan: ReadPlan,
    views: tuple[StoredView, ...],
    pieces: list[_Whole | StoredColumn | OnDemandColumn],
    keys_by_view: list[list[str]],
    tables: ViewTables,
    request_data: Mapping[str, m.RepeatedValue],
    rows: int,
    now: datetime,
) -> list[bytes]:
    """Replies for any selection (features picked from views, on-demand views)."""
    now_us = epoch_us(now)
    view_tables = [tables.get(view.key, _EMPTY) for view in views]
    results = []
    for row in range(rows):
        fetched = [
            _fetch(view, table.get(keys[row]), now_us)
            for view, table, keys in zip(views, view_tables, keys_by_view, strict=True)
        ]
        results.append(_vector(plan, pieces, fetched, request_data, row))
    return results


class _Fetched:
    """One view's stored row for one entity, as the general assembly needs it."""

    __slots__ = ("_fields", "count", "row", "status", "time")

    def __init__(self, row: bytes, status: int, time: bytes, count: int = 0) -> None:
        self.row = row
        self.status = status
        self.time = time
        """The event time as an encoded ``event_times`` field."""
        self._fields: list[bytes] | None = None if status == _PRESENT else []
        self.count = count if status == _PRESENT else 0
        """How many values the row holds (0 unless PRESENT)."""

    @property
    def fields(self) -> list[bytes]:
        """The row's values as encoded ``values`` fields, split only when needed."""
        if self._fields is None:
            self._fields = wire.value_fields(self.row)
        return self._fields

    def python(self, index: int) -> object:
        """One value as Python (for on-demand inputs); None when absent."""
        if index >= self.count:
            return None
        return to_python(m.FeatureRow.FromString(self.row).values[index])


_ABSENT = _Fetched(b"", _NOT_FOUND, wire.NO_TIME)


def _fetch(view: StoredView, found: ServingRow | None, now_us: int) -> _Fetched:
    if found is None:
        return _ABSENT
    if not found.event_us <= now_us < found.next_us:  # a chain with rows of the future
        found = found.at(now_us)
        if found is None:
            return _ABSENT
    if view.expired(found, now_us):
        return _Fetched(b"", _EXPIRED, found.time)
    return _Fetched(found.row, _PRESENT, found.time, found.features)


@dataclass(frozen=True)
class _Whole:
    """Columns that are all of one view's features in order: copied as the stored row."""

    view_index: int
    count: int


def segments(plan: ReadPlan) -> list[_Whole | StoredColumn | OnDemandColumn]:
    """The plan's columns, with runs that cover a whole view merged into one piece."""
    merged: list[_Whole | StoredColumn | OnDemandColumn] = []
    columns, at = plan.columns, 0
    while at < len(columns):
        column = columns[at]
        if isinstance(column, StoredColumn) and column.feature_index == 0:
            count = len(plan.views[column.view_index].view.features)
            run = columns[at : at + count]
            if len(run) == count and all(
                isinstance(c, StoredColumn)
                and c.view_index == column.view_index
                and c.feature_index == i
                for i, c in enumerate(run)
            ):
                merged.append(_Whole(column.view_index, count))
                at += count
                continue
        merged.append(column)
        at += 1
    return merged


def _vector(
    plan: ReadPlan,
    pieces: list[_Whole | StoredColumn | OnDemandColumn],
    fetched: list[_Fetched],
    request_data: Mapping[str, m.RepeatedValue],
    row: int,
) -> bytes:
    outputs = [_run_step(step, fetched, request_data, row) for step in plan.steps]
    values: list[bytes] = []
    statuses = bytearray()
    times: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, _Whole):
            found = fetched[piece.view_index]
            if found.count == piece.count:  # present, with every feature stored
                values.append(found.row)
                statuses.extend([_PRESENT] * piece.count)
                times.append(found.time * piece.count)
                continue
            piece_columns = [StoredColumn(piece.view_index, i) for i in range(piece.count)]
        else:
            piece_columns = [piece]
        for column in piece_columns:
            if isinstance(column, StoredColumn):
                found = fetched[column.view_index]
                if column.feature_index < found.count:
                    values.append(found.fields[column.feature_index])
                    statuses.append(_PRESENT)
                else:  # absent, expired, or a feature appended after this row was stored
                    values.append(wire.NULL_VALUE)
                    statuses.append(_NOT_FOUND if found.status == _PRESENT else found.status)
                times.append(found.time)
            else:
                values.append(wire.value_field(outputs[column.step_index][column.output]))
                statuses.append(_PRESENT)
                times.append(wire.NO_TIME)
    return wire.result_field(values, statuses, times)


def _run_step(
    step: OnDemandStep,
    fetched: list[_Fetched],
    request_data: Mapping[str, m.RepeatedValue],
    row: int,
) -> dict[str, bytes]:
    inputs: dict[str, object] = {}
    for name, column in step.inputs:
        inputs[name] = fetched[column.view_index].python(column.feature_index)
    for request_field in step.view.request_fields:
        column = request_data.get(request_field.name)
        if column is None:
            raise InvalidArgument(
                f"request_data lacks {request_field.name!r}, needed by on-demand view "
                f"{step.view.name!r}"
            )
        inputs[request_field.name] = step.function.request_value(
            request_field, column.values[row], f"request_data[{request_field.name!r}]"
        )
    values = step.function.run(inputs, row)  # the one runner, offline too (domain/training.py)
    return {
        f.name: value.SerializeToString()
        for f, value in zip(step.view.features, values, strict=True)
    }
