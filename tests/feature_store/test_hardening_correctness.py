"""Issue 10, wrong answers: the feature store must answer what a point-in-time oracle says.

Each test names the class of wrong answer it guards. Tests marked ``xfail(strict=True)``
fail on the code they were written against, for the reason given; the fix removes the
marker (strict: a fixed test that still carries it fails the suite). Only the public API
is used (stubs, the SDK, the caller's own Postgres tables, a second feature-store process
started as an operator would), so the service's insides can move freely.

Clock discipline: online reads use the server's clock. Generated histories put every
instant at which an answer can change (event times, known-at times, TTL expiries) on a
grid of ``base + k * 10 min + 5 min``, so nothing changes within 5 minutes of ``base``;
the online read and the historical label at "now" fall in that quiet window and must
therefore agree exactly.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings, ServiceName
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Bool,
    Entity,
    FeatureView,
    Field,
    Float64,
    Int64,
    PushSource,
    StreamSource,
    String,
    Timestamp,
    on_demand_feature_view,
    repository_of,
)
from tests.feature_store.hardening_helpers import (
    arrow_ipc,
    assert_caller_mistake,
    feature_store_process,
    materialize,
    outcome,
    same_value,
    training_set,
)
from tests.feature_store.helpers import column, python, suffix

PRESENT, NOT_FOUND, EXPIRED = (
    m.FEATURE_STATUS_PRESENT,
    m.FEATURE_STATUS_NOT_FOUND,
    m.FEATURE_STATUS_EXPIRED,
)
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
"""Real servers: few examples, no per-example deadline, the same examples on every run.
No shrinking (a minute per failing property against a real server): add ``Phase.shrink``
locally to get a minimal failing history."""


async def _apply(features: FeatureStoreStub, *objects: object) -> None:
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of(list(objects)))
    )


async def _push(
    features: FeatureStoreStub, view: str, join_key: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Rows of (key, event time, value) into a push view with one feature ``v``."""
    if not rows:
        return
    keys, times, values = zip(*rows, strict=True)
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=view,
            columns={join_key: column(keys), "event_time": column(times), "v": column(values)},
        )
    )


def _labels(join_key: str, keys: Sequence[object], moment: datetime) -> bytes:
    return arrow_ipc(
        pa.table(
            {
                join_key: keys,
                "event_time": pa.array([moment] * len(keys), pa.timestamp("us", tz="UTC")),
            }
        )
    )


async def _online(
    features: FeatureStoreStub, references: list[str], join_key: str, keys: list[str]
) -> rr.GetOnlineFeaturesResponse:
    return await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=references), entities={join_key: column(keys)}
        )
    )


# ---------------------------------------------------------------------------------------
# 1. Online/offline skew from future-dated rows
# ---------------------------------------------------------------------------------------

GRID = timedelta(minutes=10)
ENTITIES = ("E0", "E1", "E2", "E3")


def _at(base: datetime, slot: int) -> datetime:
    """A grid instant: never within 5 minutes of ``base``."""
    return base + slot * GRID + timedelta(minutes=5)


_slots = st.one_of(
    st.integers(-3 * 144, 3 * 144 - 1),  # within three days either side of now
    st.sampled_from([-30 * 144, 30 * 144]),  # a month ago, a month ahead
)
_entity = st.integers(0, len(ENTITIES) - 1)
_ttls = st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(days=1)])
# A source row: (entity, event slot, known-at slot; None: known at its event time).
_batch_rows = st.lists(
    st.tuples(_entity, _slots, st.one_of(st.none(), _slots)),
    max_size=8,
    unique_by=lambda r: (r[0], r[1], r[1] if r[2] is None else r[2]),
)
# A row that lands later (known just before the read, after the first materialization).
_late_rows = st.lists(st.tuples(_entity, _slots), max_size=4, unique_by=lambda r: r[:2])
_pushed_rows = st.lists(st.tuples(_entity, _slots), max_size=6, unique_by=lambda r: r[:2])


@dataclass(frozen=True)
class _Known:
    """One row of a view's history as the oracle sees it."""

    entity: str
    event_time: datetime
    known_at: datetime
    value: float


def _oracle(
    history: Sequence[_Known], entity: str, ttl: timedelta, at: datetime
) -> tuple[int, float | None, datetime | None]:
    """(status, value, event time) a read at ``at`` must give: the latest row true and
    known by then (ties: the later known), null past its TTL."""
    visible = [r for r in history if r.entity == entity and r.event_time <= at and r.known_at <= at]
    if not visible:
        return NOT_FOUND, None, None
    winner = max(visible, key=lambda r: (r.event_time, r.known_at))
    if ttl and winner.event_time < at - ttl:
        return EXPIRED, None, None
    return PRESENT, winner.value, winner.event_time


@PROPERTY
@given(
    batch=_batch_rows,
    late=_late_rows,
    pushed_first=_pushed_rows,
    pushed_later=_pushed_rows,
    batch_ttl=_ttls,
    push_ttl=_ttls,
)
async def test_online_equals_the_point_in_time_answer_at_the_read_time(
    features: FeatureStoreStub,
    db_pool: asyncpg.Pool,
    batch: list[tuple[int, int, int | None]],
    late: list[tuple[int, int]],
    pushed_first: list[tuple[int, int]],
    pushed_later: list[tuple[int, int]],
    batch_ttl: timedelta,
    push_ttl: timedelta,
) -> None:
    """For random bitemporal histories (a batch view with known-at times, a push view, rows
    in the past and the future, rows that land after a first materialization), every
    entity's online value and status equal GetHistoricalFeatures with a label at the read."""
    s = suffix()
    base = datetime.now(UTC)
    await db_pool.execute(
        f"""CREATE TABLE public.skew_{s} (loan_id text, happened_at timestamptz,
                known_at timestamptz, v double precision)"""
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    batch_view = FeatureView(
        f"b_{s}",
        entity=loan,
        ttl=batch_ttl or None,
        source=BatchSource(
            f"public.skew_{s}", event_time_column="happened_at", created_time_column="known_at"
        ),
        features=[Field("v", Float64)],
    )
    push_view = FeatureView(
        f"p_{s}",
        entity=loan,
        ttl=push_ttl or None,
        source=PushSource(),
        features=[Field("v", Float64)],
    )
    await _apply(features, loan, batch_view, push_view)

    batch_history: list[_Known] = []
    push_history: list[_Known] = []

    async def insert(rows: list[tuple[str, datetime, datetime]]) -> None:
        for key, happened, known in rows:
            value = float(len(batch_history) + 1)
            batch_history.append(_Known(key, happened, known, value))
            await db_pool.execute(
                f"INSERT INTO public.skew_{s} VALUES ($1, $2, $3, $4)", key, happened, known, value
            )

    async def push(rows: list[tuple[int, int]]) -> None:
        pushed = [
            (ENTITIES[e], _at(base, slot), 1000.0 + len(push_history) + i)
            for i, (e, slot) in enumerate(rows)
        ]
        await _push(features, f"p_{s}", "loan_id", pushed)
        known = datetime.now(UTC)  # after the server stamped them: the order is what counts
        push_history.extend(_Known(k, t, known, v) for k, t, v in pushed)

    await insert(
        [
            (ENTITIES[e], _at(base, event), _at(base, event if known is None else known))
            for e, event, known in batch
        ]
    )
    await materialize(features, rr.MaterializeRequest(feature_view=f"b_{s}"))
    await push(pushed_first)
    # Later arrivals: known a minute before base, after everything the first run read.
    await insert(
        [(ENTITIES[e], _at(base, event), base - timedelta(minutes=1)) for e, event in late]
    )
    await materialize(features, rr.MaterializeRequest(feature_view=f"b_{s}"))
    await push(pushed_later)

    references = [f"b_{s}:v", f"p_{s}:v"]
    online = await _online(features, references, "loan_id", list(ENTITIES))
    read_at = datetime.now(UTC)
    _, offline = await training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=references),
            entity_rows_arrow=_labels("loan_id", ENTITIES, read_at),
        ),
    )
    assert datetime.now(UTC) - base < timedelta(minutes=4), "the quiet window was overrun"

    note(f"batch history: {batch_history}")
    note(f"push history: {push_history}")
    for row, (entity, vector) in enumerate(zip(ENTITIES, online.results, strict=True)):
        for index, (reference, history, ttl) in enumerate(
            [(references[0], batch_history, batch_ttl), (references[1], push_history, push_ttl)]
        ):
            got = python(vector.values[index])
            status = vector.statuses[index]
            historical = offline.column(reference).to_pylist()[row]
            assert (got, status == PRESENT) == (historical, historical is not None), (
                f"{entity} {reference}: online {got} ({m.FeatureStatus.Name(status)}) but "
                f"the training set at the read time says {historical}"
            )
            want_status, want_value, want_time = _oracle(history, entity, ttl, read_at)
            assert (status, got) == (want_status, want_value), f"{entity} {reference}"
            if want_time is not None:
                assert vector.event_times[index].ToDatetime(tzinfo=UTC) == want_time


async def test_a_future_dated_row_neither_shows_nor_masks_the_current_value(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """The issue's example, batch and push: known now, true next month; then a row true an
    hour ago lands. Online and the training set at now both answer the hour-old row."""
    s = suffix()
    now = datetime.now(UTC)
    await db_pool.execute(
        f"CREATE TABLE public.fut_{s} (loan_id text, happened_at timestamptz, "
        "known_at timestamptz, v double precision)"
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    batch_view = FeatureView(
        f"b_{s}",
        entity=loan,
        source=BatchSource(
            f"public.fut_{s}", event_time_column="happened_at", created_time_column="known_at"
        ),
        features=[Field("v", Float64)],
    )
    push_view = FeatureView(
        f"p_{s}", entity=loan, source=PushSource(), features=[Field("v", Float64)]
    )
    await _apply(features, loan, batch_view, push_view)
    next_month, hour_ago = now + timedelta(days=30), now - timedelta(hours=1)

    insert = f"INSERT INTO public.fut_{s} VALUES ('L1', $1, $2, $3)"
    await db_pool.execute(insert, next_month, now - timedelta(hours=2), 9.0)
    await materialize(features, rr.MaterializeRequest(feature_view=f"b_{s}"))
    await _push(features, f"p_{s}", "loan_id", [("L1", next_month, 9.0)])
    await db_pool.execute(insert, hour_ago, now - timedelta(minutes=30), 1.0)
    await materialize(features, rr.MaterializeRequest(feature_view=f"b_{s}"))
    await _push(features, f"p_{s}", "loan_id", [("L1", hour_ago, 1.0)])

    references = [f"b_{s}:v", f"p_{s}:v"]
    online = await _online(features, references, "loan_id", ["L1"])
    _, offline = await training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=references),
            entity_rows_arrow=_labels("loan_id", ["L1"], datetime.now(UTC)),
        ),
    )
    assert [offline.column(r).to_pylist()[0] for r in references] == [1.0, 1.0]
    [vector] = online.results
    assert [python(v) for v in vector.values] == [1.0, 1.0]
    assert list(vector.statuses) == [PRESENT, PRESENT]
    assert [t.ToDatetime(tzinfo=UTC) for t in vector.event_times] == [hour_ago, hour_ago]


async def test_a_future_dated_row_shows_when_its_time_comes_and_expires_by_its_ttl(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """Batch and push: row A (true since a second ago) is served until row B's event time
    (4 s ahead) comes; B is then served until its event time + TTL (6 s), then EXPIRED.
    (The TTL outlasts the 5 s from A's time to B's, so A is still fresh when B comes.)"""
    s = suffix()
    ttl = timedelta(seconds=6)
    await db_pool.execute(
        f"CREATE TABLE public.soon_{s} (loan_id text, happened_at timestamptz, "
        "known_at timestamptz, v double precision)"
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    batch_view = FeatureView(
        f"b_{s}",
        entity=loan,
        ttl=ttl,
        source=BatchSource(
            f"public.soon_{s}", event_time_column="happened_at", created_time_column="known_at"
        ),
        features=[Field("v", Float64)],
    )
    push_view = FeatureView(
        f"p_{s}", entity=loan, ttl=ttl, source=PushSource(), features=[Field("v", Float64)]
    )
    await _apply(features, loan, batch_view, push_view)
    start = datetime.now(UTC)
    a_time, b_time = start - timedelta(seconds=1), start + timedelta(seconds=4)
    await db_pool.executemany(
        f"INSERT INTO public.soon_{s} VALUES ('L1', $1, $2, $3)",
        [(a_time, a_time, 1.0), (b_time, start - timedelta(seconds=1), 2.0)],
    )
    await materialize(features, rr.MaterializeRequest(feature_view=f"b_{s}"))
    await _push(features, f"p_{s}", "loan_id", [("L1", a_time, 1.0), ("L1", b_time, 2.0)])
    references = [f"b_{s}:v", f"p_{s}:v"]

    async def read() -> tuple[list[object], list[int], datetime]:
        before = datetime.now(UTC)
        [vector] = (await _online(features, references, "loan_id", ["L1"])).results
        return [python(v) for v in vector.values], list(vector.statuses), before

    values, statuses, read_at = await read()
    assert read_at < b_time - timedelta(seconds=1), "setup was too slow for this test"
    assert (values, statuses) == ([1.0, 1.0], [PRESENT, PRESENT]), "B is not true yet"

    slack = timedelta(seconds=1.5)
    while True:  # B shows once its time comes, and not before
        values, statuses, read_at = await read()
        if values != [1.0, 1.0]:
            break
        assert read_at < b_time + slack, "B did not show when its time came"
        await asyncio.sleep(0.05)
    assert read_at >= b_time - timedelta(milliseconds=100), f"B showed before its time: {values}"
    assert (values, statuses) == ([2.0, 2.0], [PRESENT, PRESENT])

    while statuses != [EXPIRED, EXPIRED]:  # and expires by TTL from its event time
        assert read_at < b_time + ttl + slack, f"B never expired: {values} {statuses}"
        assert values == [2.0, 2.0] and statuses == [PRESENT, PRESENT], (values, statuses)
        await asyncio.sleep(0.05)
        values, statuses, read_at = await read()
    assert read_at >= b_time + ttl - timedelta(milliseconds=100)
    assert values == [None, None]


async def _two_day_source(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, rows: list[tuple[datetime, datetime, float]]
) -> str:
    """A batch view (known-at column, no TTL) over rows of (event time, known at, v) for L1."""
    s = suffix()
    await db_pool.execute(
        f"CREATE TABLE public.bound_{s} (loan_id text, happened_at timestamptz, "
        "known_at timestamptz, v double precision)"
    )
    await db_pool.executemany(f"INSERT INTO public.bound_{s} VALUES ('L1', $1, $2, $3)", rows)
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"b_{s}",
        entity=loan,
        source=BatchSource(
            f"public.bound_{s}", event_time_column="happened_at", created_time_column="known_at"
        ),
        features=[Field("v", Float64)],
    )
    await _apply(features, loan, view)
    return f"b_{s}"


async def test_materialize_end_time_is_an_event_time_bound(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    known = now - timedelta(minutes=10)
    view = await _two_day_source(
        features,
        db_pool,
        [(now - timedelta(days=3), known, 3.0), (now - timedelta(hours=1), known, 1.0)],
    )
    until = rr.MaterializeRequest(feature_view=view)
    until.end_time.FromDatetime(now - timedelta(days=2))
    await materialize(features, until)
    [vector] = (await _online(features, [f"{view}:v"], "loan_id", ["L1"])).results
    assert (python(vector.values[0]), vector.statuses[0]) == (3.0, PRESENT), (
        "materialized up to two days ago: the value true then"
    )

    await materialize(features, rr.MaterializeRequest(feature_view=view))
    [vector] = (await _online(features, [f"{view}:v"], "loan_id", ["L1"])).results
    assert (python(vector.values[0]), vector.statuses[0]) == (1.0, PRESENT)


async def test_materialize_to_a_future_end_time_serves_only_what_is_known(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """Either refused (INVALID_ARGUMENT naming end_time) or online equals the answer at now."""
    now = datetime.now(UTC)
    view = await _two_day_source(
        features,
        db_pool,
        [
            (now - timedelta(hours=2), now - timedelta(hours=2), 2.0),
            (now - timedelta(hours=1), now + timedelta(days=1), 1.0),  # known tomorrow
        ],
    )
    ahead = rr.MaterializeRequest(feature_view=view)
    ahead.end_time.FromDatetime(now + timedelta(days=2))
    error = await outcome(materialize(features, ahead))
    assert_caller_mistake(error, "end_time", allow_ok=True)
    if error is not None:
        return
    [vector] = (await _online(features, [f"{view}:v"], "loan_id", ["L1"])).results
    _, offline = await training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{view}:v"]),
            entity_rows_arrow=_labels("loan_id", ["L1"], datetime.now(UTC)),
        ),
    )
    assert offline.column(f"{view}:v").to_pylist() == [2.0]
    assert (python(vector.values[0]), vector.statuses[0]) == (2.0, PRESENT)


# ---------------------------------------------------------------------------------------
# 2. Label columns come back as they went in
# ---------------------------------------------------------------------------------------

_TRICKY_TEXT = [
    "true",
    "false",
    "",
    "null",
    "NULL",
    "NaN",
    "0",
    "1",
    "None",
    " ",
    "a,b",
    'q"uote',
    "ünï\U0001f600",
]
_text = st.one_of(st.sampled_from(_TRICKY_TEXT), st.text(max_size=12))
_moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)
)  # naive; microseconds included
_LABEL_TYPES: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "int32": (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "string": (pa.string(), _text),
    "bool": (pa.bool_(), st.booleans()),
    "timestamp_utc": (pa.timestamp("us", tz="UTC"), _moments.map(lambda t: t.replace(tzinfo=UTC))),
    "timestamp_naive": (pa.timestamp("us"), _moments),
    "date32": (pa.date32(), st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1))),
}


@st.composite
def _label_tables(draw: st.DrawFn, join_key: str, key_type: pa.DataType) -> pa.Table:
    rows = draw(st.integers(1, 6))
    keys = (
        st.integers(-(2**63), 2**63 - 1)
        if key_type == pa.int64()
        else st.one_of(st.sampled_from(["L1", "L2", "true", "1"]), st.text(min_size=1, max_size=8))
    )
    columns: dict[str, pa.Array] = {
        join_key: pa.array(draw(st.lists(keys, min_size=rows, max_size=rows)), key_type),
        "event_time": pa.array([datetime.now(UTC)] * rows, pa.timestamp("us", tz="UTC")),
    }
    kinds = draw(st.lists(st.sampled_from(sorted(_LABEL_TYPES)), min_size=1, max_size=4))
    for index, kind in enumerate(kinds):
        arrow_type, values = _LABEL_TYPES[kind]
        cells = draw(st.lists(st.one_of(st.none(), values), min_size=rows, max_size=rows))
        columns[f"label_{index}_{kind}"] = pa.array(cells, arrow_type)
    return pa.table(columns)


def _assert_unchanged(sent: pa.Table, got: pa.Table, names: Sequence[str]) -> None:
    for name in names:
        assert name in got.column_names, f"label column {name!r} was dropped"
        assert got.schema.field(name).type == sent.schema.field(name).type, (
            f"{name}: sent {sent.schema.field(name).type}, got {got.schema.field(name).type}"
        )
        for row, (a, b) in enumerate(
            zip(sent.column(name).to_pylist(), got.column(name).to_pylist(), strict=True)
        ):
            assert same_value(a, b), f"{name} row {row}: sent {a!r}, got {b!r}"


@PROPERTY
@given(data=st.data())
@example(data=None)  # the issue's own case, below
async def test_arrow_label_columns_come_back_exactly_as_sent(
    features: FeatureStoreStub, data: st.DataObject | None
) -> None:
    s = suffix()
    by_name = Entity(f"loan_{s}", join_key="loan_id")
    by_number = Entity(f"acct_{s}", join_key="acct_id", key_type=Int64)
    await _apply(
        features,
        FeatureView(f"n_{s}", entity=by_name, source=PushSource(), features=[Field("v", Float64)]),
        FeatureView(
            f"i_{s}", entity=by_number, source=PushSource(), features=[Field("v", Float64)]
        ),
    )
    for join_key, key_type, view in (
        ("loan_id", pa.string(), f"n_{s}"),
        ("acct_id", pa.int64(), f"i_{s}"),
    ):
        if data is None:
            sent = pa.table(
                {
                    join_key: pa.array(
                        ["L1", "L2", "L3"] if key_type == pa.string() else [1, 2, 3], key_type
                    ),
                    "event_time": pa.array([datetime.now(UTC)] * 3, pa.timestamp("us", tz="UTC")),
                    "text": pa.array(["true", "", None]),
                    "at": pa.array(
                        [datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)] * 3,
                        pa.timestamp("us", tz="UTC"),
                    ),
                }
            )
        else:
            sent = data.draw(_label_tables(join_key, key_type), label=join_key)
        _, got = await training_set(
            features,
            rr.GetHistoricalFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"{view}:v"]),
                entity_rows_arrow=arrow_ipc(sent),
            ),
        )
        assert got.num_rows == sent.num_rows
        _assert_unchanged(sent, got, sent.column_names)
        assert got.column_names[: sent.num_columns] == sent.column_names, "label columns first"


_PG_TYPES: dict[str, tuple[str, pa.DataType, st.SearchStrategy[Any]]] = {
    "bigint": ("bigint", pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "double": ("double precision", pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "text": (
        "text",
        pa.string(),
        st.one_of(
            st.sampled_from([*_TRICKY_TEXT, "a\nb"]),
            st.text(
                alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
                max_size=12,
            ),
        ),
    ),
    "boolean": ("boolean", pa.bool_(), st.booleans()),
    "timestamptz": (
        "timestamptz",
        pa.timestamp("us", tz="UTC"),
        _moments.map(lambda t: t.replace(tzinfo=UTC)),
    ),
}


@PROPERTY
@given(data=st.data())
@example(data=None)  # the issue's own case, below
async def test_label_table_columns_come_back_with_their_types(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, data: st.DataObject | None
) -> None:
    """A Postgres label table: bigint -> int64, double precision -> float64 (NaN, ±inf
    kept), text -> string ('', 'true', 'null' kept), boolean -> bool, timestamptz ->
    timestamp[us, UTC]; the entity column keeps its type under the join key's name."""
    s = suffix()
    by_name = Entity(f"loan_{s}", join_key="loan_id")
    by_number = Entity(f"acct_{s}", join_key="acct_id", key_type=Int64)
    await _apply(
        features,
        FeatureView(f"n_{s}", entity=by_name, source=PushSource(), features=[Field("v", Float64)]),
        FeatureView(
            f"i_{s}", entity=by_number, source=PushSource(), features=[Field("v", Float64)]
        ),
    )
    for join_key, entity_type, view in (
        ("loan_id", "text", f"n_{s}"),
        ("acct_id", "bigint", f"i_{s}"),
    ):
        table = f"public.labels_{suffix()}"
        if data is None:
            kinds, rows = ["text", "text"], [["true", ""], ["true", "null"], ["true", None]]
        else:
            kinds = data.draw(st.lists(st.sampled_from(sorted(_PG_TYPES)), min_size=1, max_size=4))
            count = data.draw(st.integers(1, 5))
            rows = [
                [data.draw(st.one_of(st.none(), _PG_TYPES[k][2])) for k in kinds]
                for _ in range(count)
            ]
        names = [f"c{i}_{k}" for i, k in enumerate(kinds)]
        await db_pool.execute(
            f"CREATE TABLE {table} (rid bigint, who {entity_type}, at timestamptz"
            + "".join(f", {n} {_PG_TYPES[k][0]}" for n, k in zip(names, kinds, strict=True))
            + ")"
        )
        now = datetime.now(UTC)
        await db_pool.executemany(
            f"INSERT INTO {table} VALUES ($1, $2, $3"
            + "".join(f", ${i + 4}" for i in range(len(kinds)))
            + ")",
            [
                (i, f"K{i}" if entity_type == "text" else i * 7, now, *row)
                for i, row in enumerate(rows)
            ],
        )
        _, got = await training_set(
            features,
            rr.GetHistoricalFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"{view}:v"]),
                label_source=rr.LabelSource(
                    table=table,
                    entity_column="who",
                    event_time_column="at",
                    columns=["rid", *names],
                ),
            ),
        )
        expected_types = {
            "rid": pa.int64(),
            join_key: pa.string() if entity_type == "text" else pa.int64(),
            **{n: _PG_TYPES[k][1] for n, k in zip(names, kinds, strict=True)},
        }
        for name, arrow_type in expected_types.items():
            assert name in got.column_names, f"{name} was dropped"
            actual = got.schema.field(name).type
            assert _same_label_type(actual, arrow_type), f"{name}: {actual}, want {arrow_type}"
        by_rid = {r["rid"]: r for r in got.to_pylist()}
        assert sorted(by_rid) == list(range(len(rows)))
        for rid, row in enumerate(rows):
            key = f"K{rid}" if entity_type == "text" else rid * 7
            assert same_value(by_rid[rid][join_key], key), (join_key, by_rid[rid][join_key], key)
            for name, sent in zip(names, row, strict=True):
                assert same_value(by_rid[rid][name], sent), (
                    f"{name}: sent {sent!r}, got {by_rid[rid][name]!r}"
                )


def _same_label_type(actual: pa.DataType, wanted: pa.DataType) -> bool:
    """Equal, allowing large_string for text and any spelling of UTC."""
    if pa.types.is_timestamp(actual) and pa.types.is_timestamp(wanted):
        return actual.unit == wanted.unit and (actual.tz or "") in {"UTC", "Etc/UTC", "+00:00"}
    if wanted == pa.string():
        return actual in (pa.string(), pa.large_string())
    return actual == wanted


# ---------------------------------------------------------------------------------------
# 3. The dataset snapshot id is a content id
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dataset:
    features: list[str]
    labels: pa.Table
    view: str
    """The push view ``v`` (value), ``g`` (grade), ``n`` (count), TTL 5 hours."""


async def _dataset(
    features: FeatureStoreStub, js: JetStreamContext, namespace: str, rows: int = 2000
) -> _Dataset:
    """Stored, stream and on-demand columns with many nulls (TTL, missing, on-demand None)."""
    s = suffix()
    now = datetime.now(UTC).replace(microsecond=0)
    loan = Entity(f"loan_{s}", join_key="loan_id")
    pushed = FeatureView(
        f"p_{s}",
        entity=loan,
        source=PushSource(),
        ttl=timedelta(hours=5),
        features=[Field("v", Float64), Field("g", String), Field("n", Int64)],
    )
    streamed = FeatureView(
        f"st_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="at"),
        ttl=timedelta(hours=2),
        allowed_lateness=timedelta(days=30),
        aggregations=[
            *(
                Aggregation("amount", f, timedelta(hours=1), f"a_{f}")
                for f in ("count", "sum", "mean", "min", "max", "last")
            ),
            Aggregation("amount", "count", timedelta(days=1), "a_count_1d"),
        ],
    )

    @on_demand_feature_view(inputs=[f"p_{s}:v"], features=[Field("o", Float64)], name=f"od_{s}")
    def doubled(row: dict) -> dict:
        v = next(value for key, value in row.items() if key.endswith(":v"))
        return {"o": None if v is None or v > 50 else v * 2}

    await _apply(features, loan, pushed, streamed, doubled)
    keys = [f"L{i}" for i in range(300)]
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"p_{s}",
            columns={
                "loan_id": column(keys),
                "event_time": column([now - timedelta(hours=i % 10) for i in range(300)]),
                "v": column([None if i % 3 == 0 else float(i % 100) for i in range(300)]),
                "g": column([None if i % 4 == 0 else f"g{i}" for i in range(300)]),
                "n": column([None if i % 5 == 0 else i for i in range(300)]),
            },
        )
    )
    events = 40
    for i in range(events):
        body = {
            "loan_id": f"L{i % 7}",
            "at": (now - timedelta(minutes=7 * i)).isoformat(),
            "amount": float(i),
        }
        await js.publish(
            f"{namespace}.ingest.src_{s}",
            json.dumps(body).encode(),
            headers={"Nats-Msg-Id": str(uuid.uuid4())},
        )
    await _until_stream_counts(features, f"st_{s}", events)
    # Half the labels after everything arrived (values), half before (not known yet: nulls).
    ready = datetime.now(UTC)
    labels = pa.table(
        {
            "loan_id": [f"L{i % 350}" for i in range(rows)],
            "event_time": pa.array(
                [ready if i % 2 else now - timedelta(minutes=i % 300) for i in range(rows)],
                pa.timestamp("us", tz="UTC"),
            ),
            "label": pa.array([None if i % 7 == 0 else i for i in range(rows)], pa.int64()),
            "note": pa.array([None if i % 5 == 0 else f"n{i}" for i in range(rows)]),
            "score": pa.array([None if i % 6 == 0 else i / 3 for i in range(rows)]),
        }
    )
    return _Dataset([f"p_{s}:*", f"st_{s}:*", f"od_{s}:*"], labels, f"p_{s}")


async def _until_stream_counts(features: FeatureStoreStub, view: str, events: int) -> None:
    """Wait until every published event counts in the view's one-day window online."""
    keys = [f"L{i}" for i in range(7)]
    for _ in range(400):
        online = await _online(features, [f"{view}:a_count_1d"], "loan_id", keys)
        if sum(python(v.values[0]) or 0 for v in online.results) == events:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the {events} stream events never all reached {view}")


def _request(
    dataset: _Dataset, labels: pa.Table | bytes | None = None
) -> rr.GetHistoricalFeaturesRequest:
    payload = (
        labels
        if isinstance(labels, bytes)
        else arrow_ipc(labels if labels is not None else dataset.labels)
    )
    return rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=dataset.features), entity_rows_arrow=payload
    )


def _with_garbage_under_nulls(table: pa.Table) -> pa.Table:
    """The same logical table, with other bytes under every null slot of its extra columns."""
    columns = {}
    for name in table.column_names:
        array = table.column(name).combine_chunks()
        if array.null_count and name == "label":
            data = np.frombuffer(array.buffers()[1], dtype=np.int64).copy()
            data[~np.asarray(array.is_valid())] = 0x5A5A5A5A5A5A5A5A
            array = pa.Array.from_buffers(
                array.type, len(array), [array.buffers()[0], pa.py_buffer(data.tobytes())]
            )
        elif array.null_count and name == "score":
            data = np.frombuffer(array.buffers()[1], dtype=np.float64).copy()
            data[~np.asarray(array.is_valid())] = 12345.678
            array = pa.Array.from_buffers(
                array.type, len(array), [array.buffers()[0], pa.py_buffer(data.tobytes())]
            )
        elif array.null_count and name == "note":
            # Null strings that still span bytes of the data buffer.
            offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[: len(array) + 1].copy()
            chunks, position = [], 0
            body = array.buffers()[2].to_pybytes() if array.buffers()[2] else b""
            for i in range(len(array)):
                piece = body[offsets[i] : offsets[i + 1]] if array[i].is_valid else b"GARBAGE"
                chunks.append(piece)
                offsets[i] = position
                position += len(piece)
            offsets[len(array)] = position
            array = pa.Array.from_buffers(
                array.type,
                len(array),
                [
                    array.buffers()[0],
                    pa.py_buffer(offsets.tobytes()),
                    pa.py_buffer(b"".join(chunks)),
                ],
            )
        columns[name] = array
    rebuilt = pa.table(columns)
    assert rebuilt.equals(table), "the rebuilt table must hold the same values"
    return rebuilt


async def test_identical_requests_get_the_same_snapshot_id(
    features: FeatureStoreStub, js: JetStreamContext, namespace: str
) -> None:
    """Repeated, re-chunked (the caller's record batches), and with other bytes under null
    slots: the same logical request over the same data gives the same id."""
    dataset = await _dataset(features, js, namespace)
    first, table = await training_set(features, _request(dataset))
    assert first.snapshot_id.startswith("sha256:") and len(first.snapshot_id) == 71
    for request in (
        _request(dataset),
        _request(dataset, arrow_ipc(dataset.labels, max_chunksize=7)),
        _request(dataset, _with_garbage_under_nulls(dataset.labels)),
    ):
        again, again_table = await training_set(features, request)
        assert again_table.equals(table)
        assert again.snapshot_id == first.snapshot_id


async def test_different_content_gets_a_different_snapshot_id(
    features: FeatureStoreStub, js: JetStreamContext, namespace: str
) -> None:
    dataset = await _dataset(features, js, namespace, rows=500)
    first, _ = await training_set(features, _request(dataset))
    labels = dataset.labels
    changed_label = labels.set_column(
        2, "label", pa.array([7, *labels.column("label").to_pylist()[1:]], pa.int64())
    )
    renamed = labels.rename_columns([*labels.column_names[:2], "target", *labels.column_names[3:]])
    fewer = labels.slice(0, labels.num_rows - 1)
    ids = {first.snapshot_id}
    for variant in (changed_label, renamed, fewer):
        snapshot, _ = await training_set(features, _request(dataset, variant))
        ids.add(snapshot.snapshot_id)
    assert len(ids) == 4, "different content must give different ids"

    # Data not yet known at the labels' times does not change their training set.
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=dataset.view,
            columns={
                "loan_id": column(["L1"]),
                "event_time": column([datetime.now(UTC) - timedelta(days=1)]),
                "v": column([77.0]),
            },
        )
    )
    unchanged, _ = await training_set(features, _request(dataset))
    assert unchanged.snapshot_id == first.snapshot_id


async def test_new_data_known_at_the_label_times_changes_the_snapshot_id(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """The same request after a batch row known before the labels' time was materialized."""
    now = datetime.now(UTC)
    view = await _two_day_source(
        features, db_pool, [(now - timedelta(days=2), now - timedelta(days=2), 1.0)]
    )
    await materialize(features, rr.MaterializeRequest(feature_view=view))
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"{view}:v"]),
        entity_rows_arrow=_labels("loan_id", ["L1", "L2"], now - timedelta(hours=1)),
    )
    first, table = await training_set(features, request)
    assert table.column(f"{view}:v").to_pylist() == [1.0, None]
    await db_pool.execute(
        f"INSERT INTO public.bound_{view.removeprefix('b_')} VALUES ('L2', $1, $1, 5.0)",
        now - timedelta(days=1),
    )
    await materialize(features, rr.MaterializeRequest(feature_view=view))
    again, table = await training_set(features, request)
    assert table.column(f"{view}:v").to_pylist() == [1.0, 5.0]
    assert again.snapshot_id != first.snapshot_id


async def test_the_snapshot_id_is_the_same_in_another_process_and_after_its_mirror_is_rebuilt(
    features: FeatureStoreStub,
    js: JetStreamContext,
    namespace: str,
    test_settings: LatheSettings,
    tmp_path: Path,
) -> None:
    """Another feature-store process on the same database, restarted, and restarted after
    its offline mirror file was deleted (README: derived data, safe to delete)."""
    dataset = await _dataset(features, js, namespace)
    reference, table = await training_set(features, _request(dataset))
    home = tmp_path / "second-home"
    mirror = test_settings.model_copy(update={"home": home}).feature_store_mirror_path
    log = tmp_path / "second.log"
    for step in ("first start", "restart", "mirror deleted"):
        if step == "mirror deleted":
            assert mirror.exists(), "the second process wrote no mirror file where expected"
            for path in mirror.parent.glob(f"{mirror.name}*"):
                path.unlink()
        async with feature_store_process(test_settings, home, log) as other:
            snapshot, other_table = await training_set(other, _request(dataset))
        assert other_table.equals(table), step
        assert snapshot.snapshot_id == reference.snapshot_id, step


async def test_a_label_table_rewritten_without_change_keeps_its_snapshot_id(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    now = datetime.now(UTC).replace(microsecond=0)
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(f"p_{s}", entity=loan, source=PushSource(), features=[Field("v", Float64)])
    await _apply(features, loan, view)
    await _push(
        features,
        f"p_{s}",
        "loan_id",
        [(f"L{i}", now - timedelta(hours=i), float(i)) for i in range(5)],
    )
    await db_pool.execute(f"CREATE TABLE public.labels_{s} (loan text, at timestamptz, y boolean)")
    await db_pool.executemany(
        f"INSERT INTO public.labels_{s} VALUES ($1, $2, $3)",
        [(f"L{i}", now - timedelta(minutes=i), i % 2 == 0) for i in range(5)],
    )
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"p_{s}:v"]),
        label_source=rr.LabelSource(
            table=f"public.labels_{s}", entity_column="loan", event_time_column="at", columns=["y"]
        ),
    )
    first, _ = await training_set(features, request)
    await db_pool.execute(f"UPDATE public.labels_{s} SET y = y WHERE loan = 'L0'")  # no change
    again, _ = await training_set(features, request)
    assert again.snapshot_id == first.snapshot_id


async def test_a_large_training_set_reaches_a_client_with_default_grpc_limits(
    feature_store_host: object, test_settings: LatheSettings
) -> None:
    """The README's SDK example opens a plain channel (4 MiB receive limit): streaming in
    chunks is what lets a big training set through it."""
    s = suffix()
    address = test_settings.service_addr(ServiceName.FEATURE_STORE)
    async with grpc.aio.insecure_channel(address) as channel:
        features = FeatureStoreStub(channel)
        loan = Entity(f"loan_{s}", join_key="loan_id")
        await _apply(
            features,
            loan,
            FeatureView(
                f"p_{s}",
                entity=loan,
                source=PushSource(),
                features=[Field(f"v{i}", Float64) for i in range(6)],
            ),
        )
        rows = 100_000  # ~2.7 MB of labels in, ~7.5 MB of training set out
        labels = pa.table(
            {
                "loan_id": [f"L{i}" for i in range(rows)],
                "event_time": pa.array([datetime.now(UTC)] * rows, pa.timestamp("us", tz="UTC")),
                "label": pa.array(range(rows), pa.int64()),
            }
        )
        request = rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"p_{s}:*"]),
            entity_rows_arrow=arrow_ipc(labels),
        )
        assert request.ByteSize() < 4 * 1024 * 1024, "the request itself must fit"
        snapshot, table = await training_set(features, request)
    assert snapshot.rows == rows and table.num_rows == rows


# ---------------------------------------------------------------------------------------
# 4. Silent truncation: lossy source types are refused, lossless ones served exactly
# ---------------------------------------------------------------------------------------

_ALIASES = {
    "smallint": ("smallint", "int2"),
    "integer": ("integer", "int4"),
    "bigint": ("bigint", "int8"),
    "real": ("real", "float4"),
    "double precision": ("double precision", "float8", "double"),
    "numeric": ("numeric", "decimal"),
    "text": ("text",),
    "boolean": ("boolean", "bool"),
    "date": ("date",),
    "timestamptz": ("timestamp with time zone", "timestamptz"),
}
_DECLARED = {
    Int64: "int64",
    Float64: "float64",
    String: "string",
    Bool: "bool",
    Timestamp: "timestamp",
}
_STAMP = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


@dataclass(frozen=True)
class _Conversion:
    source_type: str
    """The Postgres column type, as written in CREATE TABLE."""
    family: str
    """Its key in ``_ALIASES`` (names a message may use for it)."""
    declared: int
    value: object
    """What the source row holds."""
    served: object = None
    """Lossless: the value served online. Lossy: unused."""
    lossless: bool = True


_CONVERSIONS = [
    _Conversion("smallint", "smallint", Int64, 7, 7),
    _Conversion("integer", "integer", Int64, -(2**31), -(2**31)),
    _Conversion("bigint", "bigint", Int64, 2**63 - 1, 2**63 - 1),
    _Conversion("smallint", "smallint", Float64, 7, 7.0),
    _Conversion("integer", "integer", Float64, 2**31 - 1, float(2**31 - 1)),
    _Conversion("real", "real", Float64, 2.5, 2.5),
    _Conversion("double precision", "double precision", Float64, 0.1, 0.1),
    _Conversion("numeric(5, 2)", "numeric", Float64, Decimal("7.25"), 7.25),
    _Conversion("text", "text", String, "tr\u00fce", "tr\u00fce"),
    _Conversion("boolean", "boolean", Bool, True, True),
    _Conversion("timestamptz", "timestamptz", Timestamp, _STAMP, _STAMP),
    _Conversion("numeric", "numeric", Int64, Decimal("2.750"), lossless=False),
    _Conversion("numeric(10, 2)", "numeric", Int64, Decimal("2.75"), lossless=False),
    _Conversion("double precision", "double precision", Int64, 2.5, lossless=False),
    _Conversion("real", "real", Int64, 2.5, lossless=False),
    _Conversion("text", "text", Int64, "42", lossless=False),
    _Conversion("text", "text", Float64, "2.5", lossless=False),
    _Conversion("bigint", "bigint", Bool, 2, lossless=False),
    _Conversion("integer", "integer", Bool, 1, lossless=False),
    _Conversion("boolean", "boolean", Int64, True, lossless=False),
    _Conversion("bigint", "bigint", Float64, 2**53 + 1, lossless=False),
    _Conversion("date", "date", Timestamp, date(2026, 3, 1), lossless=False),
    _Conversion("timestamptz", "timestamptz", Int64, _STAMP, lossless=False),
]


def _conversion_case(conversion: _Conversion) -> Any:
    name = f"{conversion.source_type}->{_DECLARED[conversion.declared]}".replace(" ", "_")
    return pytest.param(conversion, id=name)


@pytest.mark.parametrize("conversion", [_conversion_case(c) for c in _CONVERSIONS])
async def test_source_types_are_served_exactly_or_refused_by_name(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, conversion: _Conversion
) -> None:
    """Lossless: materialized and served exactly. Lossy: refused at ApplyDefinitions or
    Materialize (FAILED_PRECONDITION / INVALID_ARGUMENT) with a message naming the column,
    the source type and the declared type, and nothing served."""
    s = suffix()
    await db_pool.execute(
        f"CREATE TABLE public.typed_{s} (loan_id text, happened_at timestamptz, "
        f"payload_value {conversion.source_type})"
    )
    await db_pool.execute(
        f"INSERT INTO public.typed_{s} VALUES ('L1', now() - interval '1 hour', $1)",
        conversion.value,
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"typed_{s}",
        entity=loan,
        source=BatchSource(f"public.typed_{s}", event_time_column="happened_at"),
        features=[Field("payload_value", conversion.declared)],
    )
    refused = await outcome(
        features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
        )
    )
    if refused is None:
        refused = await outcome(
            materialize(features, rr.MaterializeRequest(feature_view=f"typed_{s}"))
        )
    if conversion.lossless:
        assert refused is None, (
            f"a lossless conversion was refused: {refused and refused.details()}"
        )
        [vector] = (
            await _online(features, [f"typed_{s}:payload_value"], "loan_id", ["L1"])
        ).results
        assert vector.statuses[0] == PRESENT
        assert same_value(python(vector.values[0]), conversion.served), python(vector.values[0])
        return
    codes = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT})
    assert_caller_mistake(refused, "payload_value", codes=codes)
    assert refused is not None
    details = refused.details().lower()
    assert any(alias in details for alias in _ALIASES[conversion.family]), (
        f"the message does not name the source type {conversion.source_type!r}: {details}"
    )
    assert _DECLARED[conversion.declared] in details, (
        f"the message does not name the declared type: {details}"
    )
    if await outcome(features.GetFeatureView(rr.GetFeatureViewRequest(name=f"typed_{s}"))) is None:
        [vector] = (
            await _online(features, [f"typed_{s}:payload_value"], "loan_id", ["L1"])
        ).results
        assert vector.statuses[0] == NOT_FOUND, f"served anyway: {python(vector.values[0])}"


# ---------------------------------------------------------------------------------------
# 5. Materialize's watermark and late rows
# ---------------------------------------------------------------------------------------


async def _late_row_setup(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> tuple[str, str, datetime]:
    """A view materialized through row A; then row B lands with an older known-at time
    than the watermark A set, but a later event time (so B is the current value)."""
    now = datetime.now(UTC)
    view = await _two_day_source(
        features, db_pool, [(now - timedelta(days=2), now - timedelta(minutes=10), 1.0)]
    )
    first = await materialize(features, rr.MaterializeRequest(feature_view=view))
    assert first[-1].rows_read == 1
    table = f"public.bound_{view.removeprefix('b_')}"
    late_known = now - timedelta(minutes=20)  # before A's known-at: behind the watermark
    await db_pool.execute(
        f"INSERT INTO {table} VALUES ('L1', $1, $2, 2.0)", now - timedelta(days=1), late_known
    )
    return view, table, late_known


async def test_an_incremental_materialize_reads_only_past_its_watermark(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """The documented contract of a normal run: it continues after the last watermark, so a
    row that lands with an older known-at time is not read (its writer must re-run the
    range). Both stores then agree on the old value."""
    view, _, _ = await _late_row_setup(features, db_pool)
    again = await materialize(features, rr.MaterializeRequest(feature_view=view))
    assert again[-1].rows_read == 0
    [vector] = (await _online(features, [f"{view}:v"], "loan_id", ["L1"])).results
    _, offline = await training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{view}:v"]),
            entity_rows_arrow=_labels("loan_id", ["L1"], datetime.now(UTC)),
        ),
    )
    assert python(vector.values[0]) == offline.column(f"{view}:v").to_pylist()[0] == 1.0


async def test_materialize_can_rerun_a_range_to_pick_up_a_late_row(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    view, _, late_known = await _late_row_setup(features, db_pool)
    fields = rr.MaterializeRequest.DESCRIPTOR.fields_by_name
    assert "start_time" in fields, "MaterializeRequest has no way to re-run a range"
    rerun = rr.MaterializeRequest(feature_view=view)
    rerun.start_time.FromDatetime(late_known - timedelta(minutes=1))  # type: ignore[attr-defined]
    progress = await materialize(features, rerun)
    assert progress[-1].done and progress[-1].rows_read >= 1

    [vector] = (await _online(features, [f"{view}:v"], "loan_id", ["L1"])).results
    assert (python(vector.values[0]), vector.statuses[0]) == (2.0, PRESENT)
    now = datetime.now(UTC)
    _, offline = await training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{view}:v"]),
            entity_rows_arrow=_labels("loan_id", ["L1"], now),
        ),
    )
    assert offline.column(f"{view}:v").to_pylist() == [2.0]
