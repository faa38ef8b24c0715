"""Issue 10, caller mistakes: a feature-store request never gets INTERNAL or UNKNOWN for
something the caller did; it is refused with a status that says so and a message naming
the field, or (where the issue allows it) accepted and answered exactly.

Tests marked ``xfail(strict=True)`` fail on the code they were written against, for the
reason given; the fix removes the marker. Public API only: generated stubs, the SDK, raw
bytes on a generic gRPC channel, and the caller's own Postgres tables.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pandas as pd
import pyarrow as pa
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1 import service_pb2
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings, ServiceName
from libs.sdk.feature_store import FeatureStoreClient
from libs.sdk.features import (
    AllowedValues,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    PushSource,
    String,
    Timestamp,
    on_demand_feature_view,
    repository_of,
)
from tests.feature_store.hardening_helpers import (
    NEVER,
    arrow_ipc,
    assert_caller_mistake,
    feature_store_process,
    materialize,
    outcome,
    private_feature_store,
    same_value,
    training_set,
)
from tests.feature_store.helpers import column, python, suffix
from tests.support.infra import InfraEndpoints

SERVICE = service_pb2.DESCRIPTOR.services_by_name["FeatureStore"]
INVALID = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
INVALID_OR_MISSING = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})


@dataclass(frozen=True)
class _Store:
    """One test's definitions: entity ``loan_<s>`` (join key loan_id) and its views."""

    s: str
    push: str
    """Push view: v (float64), g (string, allowed 'A'/'B'), z (timestamp), TTL 1 day."""
    batch: str
    """Batch view over public.src_<s>: rate (float64), known-at column."""
    on_demand: str
    """On-demand view reading push v and request fields asked_at (timestamp), note (string)."""
    service: str


async def _store(features: FeatureStoreStub, db_pool: asyncpg.Pool) -> _Store:
    s = suffix()
    await db_pool.execute(
        f"CREATE TABLE public.src_{s} (loan_id text, happened_at timestamptz, "
        "known_at timestamptz, rate double precision)"
    )
    loan = Entity(f"loan_{s}", join_key="loan_id")
    push = FeatureView(
        f"p_{s}",
        entity=loan,
        source=PushSource(),
        ttl=timedelta(days=1),
        features=[
            Field("v", Float64),
            Field("g", String, [AllowedValues(["A", "B"])]),
            Field("z", Timestamp),
        ],
    )
    batch = FeatureView(
        f"b_{s}",
        entity=loan,
        source=BatchSource(
            f"public.src_{s}", event_time_column="happened_at", created_time_column="known_at"
        ),
        features=[Field("rate", Float64)],
    )

    @on_demand_feature_view(
        inputs=[f"p_{s}:v"],
        request_fields=[Field("asked_at", Timestamp), Field("note", String)],
        features=[Field("echo", String)],
        name=f"od_{s}",
    )
    def echo(row: dict) -> dict:
        return {"echo": f"{row['note']}@{row['asked_at']}"}

    service = FeatureService(f"svc_{s}", [f"p_{s}:*", f"od_{s}:*"])
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, push, batch, echo, service]))
    )
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"p_{s}",
            columns={
                "loan_id": column(["L1"]),
                "event_time": column([datetime.now(UTC) - timedelta(hours=1)]),
                "v": column([1.5]),
                "g": column(["A"]),
            },
        )
    )
    return _Store(s, f"p_{s}", f"b_{s}", f"od_{s}", f"svc_{s}")


def _labels(*keys: str, at: datetime | None = None, **extra: pa.Array) -> bytes:
    moment = at or datetime.now(UTC)
    return arrow_ipc(
        pa.table(
            {
                "loan_id": list(keys),
                "event_time": pa.array([moment] * len(keys), pa.timestamp("us", tz="UTC")),
                **extra,
            }
        )
    )


async def _serving(test_settings: LatheSettings) -> bool:
    address = test_settings.service_addr(ServiceName.FEATURE_STORE)
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="")
        )
    return reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------------------
# Bytes that are not a valid request
# ---------------------------------------------------------------------------------------


def _string_field_path(message: Descriptor, depth: int = 0) -> list[FieldDescriptor] | None:
    """The first path to a string field (through message fields), for bad UTF-8."""
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return [field]
    if depth < 3:
        for field in message.fields:
            if (
                field.type == FieldDescriptor.TYPE_MESSAGE
                and not field.message_type.GetOptions().map_entry
            ):
                inner = _string_field_path(field.message_type, depth + 1)
                if inner is not None:
                    return [field, *inner]
    return None


def _length_delimited(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([(number << 3) | 2, len(payload)]) + payload


def _garbage_for(method: MethodDescriptor) -> dict[str, bytes]:
    path = _string_field_path(method.input_type)
    assert path is not None, method.full_name
    bad_utf8 = b"\xff\xfe"
    for field in reversed(path):
        bad_utf8 = _length_delimited(field.number, bad_utf8)
    return {
        "truncated": b"\x0a\xff",  # field 1, 255 bytes announced, none sent
        "bad-varint": b"\x08" + b"\xff" * 11,  # a varint longer than ten bytes
        "bad-utf8": bad_utf8,
        "group-end": b"\x0c",  # an end-group tag with no group open
    }


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda method: method.name)
async def test_bytes_that_are_not_a_request_are_invalid_argument(
    feature_store_host: object, test_settings: LatheSettings, method: MethodDescriptor
) -> None:
    """Every RPC, from the descriptors: INVALID_ARGUMENT naming the request, no Python
    internals in the message, and the service still SERVING."""
    path = f"/{SERVICE.full_name}/{method.name}"
    address = test_settings.service_addr(ServiceName.FEATURE_STORE)
    problems = []
    async with grpc.aio.insecure_channel(address) as channel:
        for label, payload in _garbage_for(method).items():
            if method.server_streaming:
                stream = channel.unary_stream(path, lambda b: b, lambda b: b)
                error = await outcome(_drain(stream(payload, timeout=10)))
            else:
                unary = channel.unary_unary(path, lambda b: b, lambda b: b)
                error = await outcome(unary(payload, timeout=10))
            details = "" if error is None else error.details() or ""
            if error is None or error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                problems.append(f"{label}: {error and error.code().name}: {details}")
            elif "<class" in details or "Traceback" in details or "DecodeError" in details:
                problems.append(f"{label}: Python internals in {details!r}")
            elif method.input_type.name not in details and "request" not in details.lower():
                problems.append(f"{label}: the message does not say the request is bad: {details}")
    assert problems == []
    assert await _serving(test_settings)


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


# ---------------------------------------------------------------------------------------
# NUL characters in text fields
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """One request with a caller's mistake (or oddity) in one field."""

    call: Callable[[FeatureStoreStub, _Store], Awaitable[object]]
    names: tuple[str, ...]
    """Any of these in the message names the field."""
    allow_ok: bool = False
    """Whether accepting it is fine (then ``check`` verifies what was stored)."""
    codes: frozenset[grpc.StatusCode] = INVALID
    check: Callable[[FeatureStoreStub, _Store], Awaitable[None]] | None = None


def _push(columns: dict[str, m.RepeatedValue]) -> Callable[..., Awaitable[object]]:
    def call(features: FeatureStoreStub, store: _Store) -> Awaitable[object]:
        return features.PushFeatures(
            rr.PushFeaturesRequest(feature_view=store.push, columns=columns)
        )

    return call


def _now_column() -> m.RepeatedValue:
    return column([datetime.now(UTC) - timedelta(minutes=1)])


async def _online_value(
    features: FeatureStoreStub, store: _Store, key: str, feature: str
) -> object:
    [vector] = (
        await features.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"{store.push}:{feature}"]),
                entities={"loan_id": column([key])},
            )
        )
    ).results
    return python(vector.values[0])


async def _pushed_text_reads_back(features: FeatureStoreStub, store: _Store) -> None:
    assert await _online_value(features, store, "L1", "g") == "A\x00B"


async def _pushed_key_reads_back(features: FeatureStoreStub, store: _Store) -> None:
    assert await _online_value(features, store, "L\x001", "v") == 2.5


async def _description_reads_back(features: FeatureStoreStub, store: _Store) -> None:
    view = (
        await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"nul_{store.s}"))
    ).feature_view
    assert view.description == "about\x00this" and view.tags["team"] == "a\x00b"
    assert view.features[0].description == "x\x00y"


def _apply_with(
    mutate: Callable[[m.FeatureRepository, _Store], None],
) -> Callable[..., Awaitable[object]]:
    def call(features: FeatureStoreStub, store: _Store) -> Awaitable[object]:
        loan = Entity(f"loan_{store.s}", join_key="loan_id")
        view = FeatureView(
            f"nul_{store.s}", entity=loan, source=PushSource(), features=[Field("x", Float64)]
        )
        repository = repository_of([loan, view])
        mutate(repository, store)
        return features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository))

    return call


def _described(repository: m.FeatureRepository, store: _Store) -> None:
    view = repository.feature_views[0]
    view.description = "about\x00this"
    view.tags["team"] = "a\x00b"
    view.features[0].description = "x\x00y"
    repository.entities[0].description = "e\x00"


def _nul_code(repository: m.FeatureRepository, store: _Store) -> None:
    repository.on_demand_views.add(
        name=f"nulcode_{store.s}",
        version=1,
        inputs=[f"{store.push}:v"],
        features=[m.Field(name="o", type=m.VALUE_TYPE_FLOAT64)],
        source_code="def f(row):\n    return {'o': 1.0}  # \x00\n",
        function_name="f",
    )


def _nul_table(repository: m.FeatureRepository, store: _Store) -> None:
    repository.feature_views[0].batch_source.table = "public.src\x00x"
    repository.feature_views[0].batch_source.event_time_column = "t"


def _nul_allowed(repository: m.FeatureRepository, store: _Store) -> None:
    field = repository.feature_views[0].features.add(name="grade", type=m.VALUE_TYPE_STRING)
    field.expectations.add(allowed_values=m.AllowedValues(values=[m.Value(string_value="A\x00")]))


def _nul_service_reference(repository: m.FeatureRepository, store: _Store) -> None:
    repository.feature_services.add(
        name=f"nulsvc_{store.s}", version=1, features=[f"{store.push}:\x00"]
    )


def _historical(**fields: Any) -> Callable[..., Awaitable[object]]:
    def call(features: FeatureStoreStub, store: _Store) -> Awaitable[object]:
        request = rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{store.push}:v"]), **fields
        )
        return training_set(features, request)

    return call


async def _nul_key_in_labels(features: FeatureStoreStub, store: _Store) -> object:
    _, table = await training_set(
        features,
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{store.push}:v"]),
            entity_rows_arrow=_labels("L\x001", "L1"),
        ),
    )
    assert table.column("loan_id").to_pylist() == ["L\x001", "L1"]
    return table


_PUSH_TEXT = "issue 10: a NUL in a pushed text value or key reaches Postgres: INTERNAL"
_NUL_CASES = {
    "push-text-value": pytest.param(
        _Case(
            _push(
                {"loan_id": column(["L1"]), "event_time": _now_column(), "g": column(["A\x00B"])}
            ),
            ("g",),
            allow_ok=True,
            check=_pushed_text_reads_back,
        ),
    ),
    "push-entity-key": pytest.param(
        _Case(
            _push({"loan_id": column(["L\x001"]), "event_time": _now_column(), "v": column([2.5])}),
            ("loan_id",),
            allow_ok=True,
            check=_pushed_key_reads_back,
        ),
    ),
    "online-entity-key": _Case(
        lambda f, st: f.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"{st.push}:*"]),
                entities={"loan_id": column(["L\x001"])},
            )
        ),
        ("loan_id",),
        allow_ok=True,
    ),
    "online-request-data": _Case(
        lambda f, st: f.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_service=st.service,
                entities={"loan_id": column(["L1"])},
                request_data={
                    "asked_at": column([datetime.now(UTC)]),
                    "note": column(["n\x00te"]),
                },
            )
        ),
        ("note",),
        allow_ok=True,
    ),
    "online-feature-reference": _Case(
        lambda f, st: f.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"{st.push}:v\x00"]),
                entities={"loan_id": column(["L1"])},
            )
        ),
        ("feature", "reference"),
    ),
    "online-feature-service": _Case(
        lambda f, st: f.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_service=f"{st.service}\x00", entities={"loan_id": column(["L1"])}
            )
        ),
        ("feature_service", "feature service"),
        codes=INVALID_OR_MISSING,
    ),
    "get-feature-view": _Case(
        lambda f, st: f.GetFeatureView(rr.GetFeatureViewRequest(name=f"{st.push}\x00")),
        ("feature view", "name"),
        codes=INVALID_OR_MISSING,
    ),
    "apply-descriptions-and-tags": _Case(
        _apply_with(_described),
        ("description", "tags"),
        allow_ok=True,
        check=_description_reads_back,
    ),
    "apply-on-demand-source": _Case(_apply_with(_nul_code), ("source_code", "nulcode")),
    "apply-batch-table": _Case(_apply_with(_nul_table), ("table",)),
    "apply-allowed-value": _Case(_apply_with(_nul_allowed), ("grade", "allowed"), allow_ok=True),
    "apply-service-reference": _Case(_apply_with(_nul_service_reference), ("feature", "reference")),
    "plan-descriptions": _Case(
        lambda f, st: f.PlanDefinitions(
            rr.PlanDefinitionsRequest(
                repository=m.FeatureRepository(
                    entities=[
                        m.Entity(
                            name=f"e_{st.s}",
                            join_key="k",
                            key_type=m.VALUE_TYPE_STRING,
                            description="\x00",
                        )
                    ]
                )
            )
        ),
        ("description",),
        allow_ok=True,
    ),
    "historical-label-key": _Case(
        lambda f, st: _nul_key_in_labels(f, st), ("loan_id",), allow_ok=True
    ),
    "historical-label-table": _Case(
        _historical(
            label_source=rr.LabelSource(
                table="public.x\x00", entity_column="a", event_time_column="b"
            )
        ),
        ("label_source.table",),
    ),
    "historical-label-columns": _Case(
        _historical(
            label_source=rr.LabelSource(
                table="public.x", entity_column="a", event_time_column="b", columns=["c\x00"]
            )
        ),
        ("label_source.columns",),
    ),
    "materialize-view": _Case(
        lambda f, st: materialize(f, rr.MaterializeRequest(feature_view=f"{st.batch}\x00")),
        ("feature_view",),
        codes=INVALID_OR_MISSING,
    ),
    "backfill-view": _Case(
        lambda f, st: f.BackfillStreamView(rr.BackfillStreamViewRequest(feature_view="s\x00")),
        ("feature_view", "feature view"),
        codes=INVALID_OR_MISSING,
    ),
    "statistics-snapshot": _Case(
        lambda f, st: f.GetFeatureStatistics(
            rr.GetFeatureStatisticsRequest(feature_view=st.push, snapshot_id="sha256:\x00" * 8)
        ),
        ("snapshot_id",),
    ),
}


@pytest.mark.parametrize("case", _NUL_CASES.values(), ids=_NUL_CASES.keys())
async def test_nul_characters_are_refused_by_field_or_kept_exactly(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, case: _Case
) -> None:
    store = await _store(features, db_pool)
    error = await outcome(case.call(features, store))
    assert_caller_mistake(error, case.names, codes=case.codes, allow_ok=case.allow_ok)
    if error is None and case.check is not None:
        await case.check(features, store)


async def test_a_nul_entity_key_read_from_postgres_is_not_internal(
    features: FeatureStoreStub,
    db_pool: asyncpg.Pool,
    test_settings: LatheSettings,
    tmp_path: Path,
) -> None:
    """LATHE_FEATURE_STORE_REPLICA_MAX_ROWS=0: online reads go to Postgres."""
    store = await _store(features, db_pool)
    async with feature_store_process(
        test_settings,
        tmp_path / "no-replica",
        tmp_path / "no-replica.log",
        LATHE_FEATURE_STORE_REPLICA_MAX_ROWS="0",
    ) as other:
        request = rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{store.push}:*"]),
            entities={"loan_id": column(["L1", "L\x001"])},
        )
        error = await outcome(other.GetOnlineFeatures(request))
        assert_caller_mistake(error, "loan_id", allow_ok=True)
        if error is None:
            reply = await other.GetOnlineFeatures(request)
            assert python(reply.results[0].values[0]) == 1.5
            assert list(reply.results[1].statuses) == [m.FEATURE_STATUS_NOT_FOUND] * 3


# ---------------------------------------------------------------------------------------
# Timestamps outside what protobuf's Timestamp allows
# ---------------------------------------------------------------------------------------

_BAD_STAMPS = {
    "huge": (2**62, 0),
    "tiny": (-(2**62), 0),
    "after-9999": (253_402_300_800, 0),
    "before-0001": (-62_135_596_801, 0),
    "negative-nanos": (0, -1),
    "nanos-overflow": (0, 1_000_000_000),
}
_EXTREME_STAMPS = {
    "first-instant": (-62_135_596_800, 0),  # 0001-01-01T00:00:00Z
    "last-instant": (253_402_300_799, 999_999_999),  # 9999-12-31T23:59:59.999999999Z
}


def _stamp_value(seconds: int, nanos: int) -> m.Value:
    value = m.Value()
    value.timestamp_value.seconds, value.timestamp_value.nanos = seconds, nanos
    return value


def _materialize_until(store: _Store, seconds: int, nanos: int) -> rr.MaterializeRequest:
    request = rr.MaterializeRequest(feature_view=store.batch)
    request.end_time.seconds, request.end_time.nanos = seconds, nanos
    return request


_STAMP_FIELDS: dict[
    str,
    tuple[Callable[[FeatureStoreStub, _Store, int, int], Awaitable[object]], str | tuple[str, ...]],
] = {
    "materialize-end_time": (
        lambda f, st, sec, ns: materialize(f, _materialize_until(st, sec, ns)),
        "end_time",
    ),
    "label_source-start_time": (
        lambda f, st, sec, ns: _historical(
            label_source=rr.LabelSource(
                table=f"public.src_{st.s}",
                entity_column="loan_id",
                event_time_column="happened_at",
                start_time={"seconds": sec, "nanos": ns},
            )
        )(f, st),
        "start_time",
    ),
    "label_source-end_time": (
        lambda f, st, sec, ns: _historical(
            label_source=rr.LabelSource(
                table=f"public.src_{st.s}",
                entity_column="loan_id",
                event_time_column="happened_at",
                end_time={"seconds": sec, "nanos": ns},
            )
        )(f, st),
        "end_time",
    ),
    "push-event_time": (
        lambda f, st, sec, ns: _push(
            {
                "loan_id": column(["L1"]),
                "event_time": m.RepeatedValue(values=[_stamp_value(sec, ns)]),
            }
        )(f, st),
        "event_time",
    ),
    "push-timestamp-feature": (
        lambda f, st, sec, ns: _push(
            {
                "loan_id": column(["L1"]),
                "event_time": _now_column(),
                "z": m.RepeatedValue(values=[_stamp_value(sec, ns)]),
            }
        )(f, st),
        "z",
    ),
    "online-request_data": (
        lambda f, st, sec, ns: f.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_service=st.service,
                entities={"loan_id": column(["L1"])},
                request_data={
                    "asked_at": m.RepeatedValue(values=[_stamp_value(sec, ns)]),
                    "note": column(["n"]),
                },
            )
        ),
        "asked_at",
    ),
    "apply-allowed-value": (
        lambda f, st, sec, ns: _apply_with(
            lambda repository, _: (
                repository.feature_views[0]
                .features.add(name="due", type=m.VALUE_TYPE_TIMESTAMP)
                .expectations.add(allowed_values=m.AllowedValues(values=[_stamp_value(sec, ns)]))
            )
        )(f, st),
        ("due", "allowed"),
    ),
}


@pytest.mark.parametrize("field", list(_STAMP_FIELDS))
async def test_timestamps_out_of_range_are_invalid_argument_naming_the_field(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, field: str
) -> None:
    """Each out-of-range Timestamp (seconds past year 1..9999, nanos outside 0..999999999)
    is refused with INVALID_ARGUMENT naming the field; the extremes of the range are
    valid input and never INTERNAL."""
    store = await _store(features, db_pool)
    call, name = _STAMP_FIELDS[field]
    problems = []
    for label, (seconds, nanos) in _BAD_STAMPS.items():
        error = await outcome(call(features, store, seconds, nanos))
        try:
            assert_caller_mistake(error, name)
        except AssertionError as problem:
            problems.append(f"{label}: {problem}")
    for label, (seconds, nanos) in _EXTREME_STAMPS.items():
        if field == "push-event_time":
            continue  # on a database of its own: test_valid_extreme_event_times_...
        error = await outcome(call(features, store, seconds, nanos))
        if error is not None and error.code() in NEVER:
            problems.append(f"{label} (valid): {error.code().name}: {error.details()}")
    assert problems == []


@pytest.mark.parametrize("extreme", _EXTREME_STAMPS, ids=_EXTREME_STAMPS.keys())
async def test_valid_extreme_event_times_do_not_stop_online_serving(
    infra: InfraEndpoints, test_settings: LatheSettings, tmp_path: Path, extreme: str
) -> None:
    """A push at the first or last instant a Timestamp allows, then an ordinary push: the
    ordinary value is served (the extreme one: expired, or not true yet). On a database of
    its own: today such a row breaks every later replica that loads it."""
    seconds, nanos = _EXTREME_STAMPS[extreme]
    async with private_feature_store(infra, test_settings, tmp_path) as features:
        loan = Entity("loan", join_key="loan_id")
        view = FeatureView(
            "rates",
            entity=loan,
            source=PushSource(),
            ttl=timedelta(days=1),
            features=[Field("v", Float64)],
        )
        await features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
        )

        async def push(key: str, stamp: m.Value, value: float) -> grpc.aio.AioRpcError | None:
            columns = {
                "loan_id": column([key]),
                "event_time": m.RepeatedValue(values=[stamp]),
                "v": column([value]),
            }
            return await outcome(
                features.PushFeatures(rr.PushFeaturesRequest(feature_view="rates", columns=columns))
            )

        error = await push("L9", _stamp_value(seconds, nanos), 3.0)
        assert_caller_mistake(error, "event_time", allow_ok=True)
        assert await push("L1", column([datetime.now(UTC)]).values[0], 4.0) is None
        reply = await features.GetOnlineFeatures(
            rr.GetOnlineFeaturesRequest(
                feature_list=rr.FeatureList(features=["rates:v"]),
                entities={"loan_id": column(["L1", "L9"])},
            )
        )
    ordinary, extreme_row = reply.results
    assert (python(ordinary.values[0]), ordinary.statuses[0]) == (4.0, m.FEATURE_STATUS_PRESENT)
    if error is None:
        expected = m.FEATURE_STATUS_EXPIRED if seconds < 0 else m.FEATURE_STATUS_NOT_FOUND
        assert list(extreme_row.statuses) == [expected]


# ---------------------------------------------------------------------------------------
# Label times in the future
# ---------------------------------------------------------------------------------------


async def test_future_label_times_are_refused_or_answered_as_known_now(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """A label (or label-table bound) in the future: refused naming the field, or answered
    with what is known now — never INTERNAL, never a value not yet known."""
    store = await _store(features, db_pool)
    soon = datetime.now(UTC) + timedelta(hours=1)  # within the push view's 1-day TTL
    await features.PushFeatures(  # known now, true only in two days
        rr.PushFeaturesRequest(
            feature_view=store.push,
            columns={
                "loan_id": column(["L1"]),
                "event_time": column([soon + timedelta(days=1)]),
                "v": column([9.0]),
            },
        )
    )
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"{store.push}:v"]),
        entity_rows_arrow=_labels("L1", at=soon),
    )
    error = await outcome(training_set(features, request))
    assert_caller_mistake(error, "event_time", allow_ok=True)
    if error is None:
        _, table = await training_set(features, request)
        assert table.column(f"{store.push}:v").to_pylist() == [1.5]

    await db_pool.execute(f"CREATE TABLE public.future_{store.s} (loan text, at timestamptz)")
    await db_pool.execute(f"INSERT INTO public.future_{store.s} VALUES ('L1', $1)", soon)
    bounded = rr.LabelSource(
        table=f"public.future_{store.s}", entity_column="loan", event_time_column="at"
    )
    bounded.end_time.FromDatetime(soon + timedelta(days=3))
    error = await outcome(
        training_set(
            features,
            rr.GetHistoricalFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"{store.push}:v"]), label_source=bounded
            ),
        )
    )
    assert_caller_mistake(error, ("end_time", "event_time", "at"), allow_ok=True)


# ---------------------------------------------------------------------------------------
# Page tokens the service did not issue
# ---------------------------------------------------------------------------------------


def _token(cursor: object) -> str:
    """A token in the format ListFeatureViews issues today (urlsafe base64 of JSON)."""
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


_TOKENS: dict[str, tuple[str | Callable[[str], str], bool, str | None]] = {
    # id: (token, or a function of a real token; accepting it is fine; xfail reason)
    "not-base64": ("%%%not a token%%%", False, None),
    "truncated": (lambda real: real[:-3], False, None),
    "json-list": (_token([1, 2]), False, None),
    "foreign-cursor": (
        _token({"before": 5}),
        False,
        None,
    ),
    "edited-cursor-type": (
        _token({"after": 5}),
        False,
        None,
    ),
    "cursor-with-nul": (
        lambda real: _token({"after": "a\x00b"}),
        True,
        None,
    ),
    "nul-in-token": (lambda real: real[:4] + "\x00" + real[4:], True, None),
}


def _token_case(name: str) -> Any:
    _, _, reason = _TOKENS[name]
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", [_token_case(name) for name in _TOKENS])
async def test_page_tokens_not_issued_by_the_service_are_refused(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, name: str
) -> None:
    await _store(features, db_pool)  # several views: a first page of one has a next token
    first = await features.ListFeatureViews(rr.ListFeatureViewsRequest(page_size=1))
    assert first.next_page_token
    token, allow_ok, _ = _TOKENS[name]
    value = token(first.next_page_token) if callable(token) else token
    error = await outcome(
        features.ListFeatureViews(rr.ListFeatureViewsRequest(page_size=1, page_token=value))
    )
    assert_caller_mistake(error, "page_token", allow_ok=allow_ok)


# ---------------------------------------------------------------------------------------
# Batch sources checked at apply, not found broken at materialize
# ---------------------------------------------------------------------------------------

_SOURCE_COLUMNS = (
    "loan_id text, happened_at timestamptz, known_at timestamptz, rate double precision"
)
_MISSING = {
    # id: (the table's columns, BatchSource overrides, what the message must name)
    "feature-column": ("loan_id text, happened_at timestamptz, known_at timestamptz", {}, "rate"),
    "event-time-column": (
        "loan_id text, known_at timestamptz, rate double precision",
        {},
        "happened_at",
    ),
    "created-time-column": (
        "loan_id text, happened_at timestamptz, rate double precision",
        {},
        "known_at",
    ),
    "entity-column": (_SOURCE_COLUMNS, {"entity_column": "borrower"}, "borrower"),
    "join-key-column": (
        "account text, happened_at timestamptz, known_at timestamptz, rate double precision",
        {},
        "loan_id",
    ),
    "table": (None, {}, "missing_"),
}


@pytest.mark.parametrize("missing", _MISSING, ids=_MISSING.keys())
async def test_a_batch_source_missing_a_column_is_refused_at_apply(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, missing: str
) -> None:
    """FAILED_PRECONDITION naming the column (or table), and nothing applied."""
    s = suffix()
    columns, overrides, named = _MISSING[missing]
    table = f"public.src_{s}" if columns else f"public.missing_{s}"
    if columns:
        await db_pool.execute(f"CREATE TABLE {table} ({columns})")
    loan = Entity(f"loan_{s}", join_key="loan_id")
    view = FeatureView(
        f"b_{s}",
        entity=loan,
        source=BatchSource(
            table,
            event_time_column="happened_at",
            created_time_column="known_at",
            **overrides,
        ),
        features=[Field("rate", Float64)],
    )
    error = await outcome(
        features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository_of([loan, view]))
        )
    )
    assert_caller_mistake(error, named, codes=frozenset({grpc.StatusCode.FAILED_PRECONDITION}))
    missing_view = await outcome(features.GetFeatureView(rr.GetFeatureViewRequest(name=f"b_{s}")))
    assert missing_view is not None and missing_view.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------------------------------
# Label column names and label times the join engine does not like
# ---------------------------------------------------------------------------------------

_ODD_NAMES = [
    "Upper",
    "with space",
    "a@b",
    "Loan_ID",
    'quo"te',
    "semi;colon",
    "ünïcode",
    "1st",
    "dash-ed",
    "dot.ted",
    "colon:name",
    "row_number",
]


@pytest.mark.parametrize("name", _ODD_NAMES)
async def test_label_column_names_pass_through_or_are_refused_by_name(
    features: FeatureStoreStub, db_pool: asyncpg.Pool, name: str
) -> None:
    """Either the column comes back under its exact name with its values, or the request
    is refused with INVALID_ARGUMENT naming it; never INTERNAL, never silently dropped."""
    store = await _store(features, db_pool)
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"{store.push}:v"]),
        entity_rows_arrow=_labels("L1", "L2", **{name: pa.array([10, 20], pa.int64())}),
    )
    error = await outcome(training_set(features, request))
    assert_caller_mistake(error, name, allow_ok=True)
    if error is None:
        _, table = await training_set(features, request)
        assert name in table.column_names, (
            f"label column {name!r} was dropped: {table.column_names}"
        )
        assert table.column(name).to_pylist() == [10, 20]


async def test_an_upper_case_label_table_column_is_refused_by_name(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    store = await _store(features, db_pool)
    await db_pool.execute(
        f'CREATE TABLE public.labels_{store.s} (loan text, at timestamptz, "Target" int)'
    )
    error = await outcome(
        training_set(
            features,
            rr.GetHistoricalFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"{store.push}:v"]),
                label_source=rr.LabelSource(
                    table=f"public.labels_{store.s}",
                    entity_column="loan",
                    event_time_column="at",
                    columns=["Target"],
                ),
            ),
        )
    )
    assert_caller_mistake(error, "Target", allow_ok=True)


async def test_nanosecond_pandas_times_without_a_nanosecond_part_are_accepted(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    store = await _store(features, db_pool)
    now = pd.Timestamp.now(tz="UTC").floor("us")
    times = pd.Series([now]).astype("datetime64[ns, UTC]")
    labels = pd.DataFrame({"loan_id": ["L1"], "event_time": times})
    assert str(labels["event_time"].dtype) == "datetime64[ns, UTC]"
    training = await FeatureStoreClient(features).get_historical_features(
        labels, features=[f"{store.push}:v"]
    )
    assert training.dataframe[f"{store.push}:v"].tolist() == [1.5]


async def test_nanosecond_label_times_are_refused_or_truncated(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    """INVALID_ARGUMENT naming event_time, or the time served at microsecond precision
    (truncated or rounded) with the training set as of it."""
    store = await _store(features, db_pool)
    moment = pd.Timestamp.now(tz="UTC").floor("us") + pd.Timedelta(nanoseconds=789)
    labels = pd.DataFrame({"loan_id": ["L1"], "event_time": [moment]})
    client = FeatureStoreClient(features)
    error = await outcome(client.get_historical_features(labels, features=[f"{store.push}:v"]))
    assert_caller_mistake(error, "event_time", allow_ok=True)
    if error is None:
        training = await client.get_historical_features(labels, features=[f"{store.push}:v"])
        served = training.dataframe["event_time"].tolist()[0]
        assert served in (moment.floor("us"), moment.ceil("us"))
        assert training.dataframe[f"{store.push}:v"].tolist() == [1.5]


async def test_a_nanosecond_label_column_comes_back_exactly_or_is_refused(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    store = await _store(features, db_pool)
    stamps = pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns", tz="UTC"))
    request = rr.GetHistoricalFeaturesRequest(
        feature_list=rr.FeatureList(features=[f"{store.push}:v"]),
        entity_rows_arrow=_labels("L1", "L2", observed_at=stamps),
    )
    error = await outcome(training_set(features, request))
    assert_caller_mistake(error, "observed_at", allow_ok=True)
    if error is None:
        _, table = await training_set(features, request)
        assert table.schema.field("observed_at").type == stamps.type
        assert all(
            same_value(a, b)
            for a, b in zip(
                table.column("observed_at").cast(pa.int64()).to_pylist(),
                stamps.cast(pa.int64()).to_pylist(),
                strict=True,
            )
        )
