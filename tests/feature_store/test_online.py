"""Push values and read them back online: latest wins, TTL, quality, on-demand, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
import pytest_asyncio

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.features import (
    AllowedValues,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    PushSource,
    Range,
    String,
    on_demand_feature_view,
    repository_of,
)
from tests.feature_store.helpers import column, python, suffix

NOW = datetime.now(UTC).replace(microsecond=0)
PRESENT, NOT_FOUND, EXPIRED = (
    m.FEATURE_STATUS_PRESENT,
    m.FEATURE_STATUS_NOT_FOUND,
    m.FEATURE_STATUS_EXPIRED,
)


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def _batch_source(db_pool: asyncpg.Pool) -> None:
    """The (empty) table the batch view reads: batch views are applied only over one."""
    await db_pool.execute(
        "CREATE TABLE IF NOT EXISTS public.nothing "
        "(loan_id text, t timestamptz, x double precision)"
    )


async def _apply(features: FeatureStoreStub, s: str, *, quarantine: bool = False) -> None:
    loan = Entity(f"loan_{s}", join_key="loan_id")
    terms = FeatureView(
        f"terms_{s}",
        entity=loan,
        source=PushSource(),
        ttl=timedelta(days=1),
        quarantine_violations=quarantine,
        features=[
            Field("interest_rate", Float64, [Range(0, 40)]),
            Field("term", Int64, [AllowedValues([36, 60])]),
            Field("grade", String),
        ],
    )
    batch = FeatureView(
        f"batch_{s}",
        entity=loan,
        source=BatchSource("public.nothing", event_time_column="t"),
        features=[Field("x", Float64)],
    )

    @on_demand_feature_view(
        inputs=[f"terms_{s}:interest_rate"],
        request_fields=[Field("requested_amount", Float64)],
        features=[Field("monthly_interest", Float64)],
        name=f"monthly_{s}",
    )
    def monthly(row: dict) -> dict:
        rate = next(v for k, v in row.items() if k.endswith(":interest_rate"))
        return {"monthly_interest": None if rate is None else row["requested_amount"] * rate / 1200}

    service = FeatureService(f"uw_{s}", [f"terms_{s}:*", f"monthly_{s}:*"])
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, terms, batch, monthly, service]))
    )


async def _push(
    features: FeatureStoreStub, view: str, rows: list[tuple]
) -> rr.PushFeaturesResponse:
    keys, times, rates, terms, grades = zip(*rows, strict=True)
    return await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=view,
            columns={
                "loan_id": column(keys),
                "event_time": column(times),
                "interest_rate": column(rates),
                "term": column(terms),
                "grade": column(grades),
            },
        )
    )


async def test_latest_value_ttl_and_missing_entities(features: FeatureStoreStub) -> None:
    s = suffix()
    await _apply(features, s)
    await _push(
        features,
        f"terms_{s}",
        [
            ("L1", NOW - timedelta(hours=3), 7.5, 36, "A"),
            ("L1", NOW - timedelta(hours=1), 9.25, 60, "B"),
            ("L2", NOW - timedelta(days=3), 12.0, 36, "C"),  # older than the 1-day TTL
        ],
    )
    await _push(features, f"terms_{s}", [("L1", NOW - timedelta(hours=2), 1.0, 36, "late")])

    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"terms_{s}:*"]),
            entities={"loan_id": column(["L1", "L2", "L3"])},
        )
    )

    assert list(response.feature_names) == [
        f"terms_{s}:interest_rate",
        f"terms_{s}:term",
        f"terms_{s}:grade",
    ]
    l1, l2, l3 = response.results
    assert [python(v) for v in l1.values] == [9.25, 60, "B"], "the latest event time wins"
    assert list(l1.statuses) == [PRESENT] * 3
    assert l1.event_times[0].ToDatetime(tzinfo=UTC) == NOW - timedelta(hours=1)
    assert [python(v) for v in l2.values] == [None] * 3 and list(l2.statuses) == [EXPIRED] * 3
    assert [python(v) for v in l3.values] == [None] * 3 and list(l3.statuses) == [NOT_FOUND] * 3


async def test_feature_service_with_on_demand_feature(features: FeatureStoreStub) -> None:
    s = suffix()
    await _apply(features, s)
    await _push(features, f"terms_{s}", [("L1", NOW, 12.0, 36, "A")])

    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_service=f"uw_{s}",
            entities={"loan_id": column(["L1", "L9"])},
            request_data={"requested_amount": column([10_000.0, 5_000.0])},
        )
    )

    assert response.feature_names[-1] == f"monthly_{s}:monthly_interest"
    assert python(response.results[0].values[-1]) == pytest.approx(100.0)
    assert python(response.results[1].values[-1]) is None


async def test_expectations_keep_or_quarantine(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    kept, held = suffix(), suffix()
    await _apply(features, kept)
    await _apply(features, held, quarantine=True)
    bad = [("L1", NOW, 55.0, 48, "A"), ("L2", NOW, 5.0, 36, "A")]

    kept_result = await _push(features, f"terms_{kept}", bad)
    held_result = await _push(features, f"terms_{held}", bad)

    assert (kept_result.rows_written, kept_result.rows_quarantined) == (2, 0)
    assert (held_result.rows_written, held_result.rows_quarantined) == (1, 1)
    counts = await db_pool.fetch(
        "SELECT stream_id FROM feature_store.events WHERE event_type = $1 AND stream_id = ANY($2)",
        "lathe.feature_store.v1.ExpectationViolations",
        [f"quality-terms_{kept}", f"quality-terms_{held}"],
    )
    assert len(counts) == 2
    quarantined = await db_pool.fetchval(
        "SELECT violations FROM feature_store.quarantine WHERE view = $1", f"terms_{held}"
    )
    assert sorted(quarantined) == ["interest_rate: range[0, 40]", "term: allowed_values"]
    online = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"terms_{held}:interest_rate"]),
            entities={"loan_id": column(["L1", "L2"])},
        )
    )
    assert [list(r.statuses) for r in online.results] == [[NOT_FOUND], [PRESENT]]


async def test_online_value_equals_the_latest_offline_value(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    await _apply(features, s)
    rows = [
        (f"L{i % 7}", NOW - timedelta(minutes=i * 13 % 97), float(i % 40), 36, f"g{i}")
        for i in range(60)
    ]
    await _push(features, f"terms_{s}", rows)

    offline = await db_pool.fetch(
        f"""SELECT DISTINCT ON (entity_key) entity_key, interest_rate, grade
            FROM feature_store."log_terms_{s}_v1"
            ORDER BY entity_key, event_time DESC, created_time DESC"""
    )
    online = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"terms_{s}:interest_rate", f"terms_{s}:grade"]),
            entities={"loan_id": column([r["entity_key"] for r in offline])},
        )
    )
    assert [[python(v) for v in r.values] for r in online.results] == [
        [r["interest_rate"], r["grade"]] for r in offline
    ]


@pytest.mark.parametrize(
    ("build", "code", "fragment"),
    [
        (
            lambda s: rr.PushFeaturesRequest(feature_view=f"nope_{s}"),
            "NOT_FOUND",
            "no feature view",
        ),
        (
            lambda s: rr.PushFeaturesRequest(feature_view=f"batch_{s}"),
            "FAILED_PRECONDITION",
            "Materialize",
        ),
        (
            lambda s: rr.PushFeaturesRequest(
                feature_view=f"terms_{s}",
                columns={
                    "loan_id": column(["L1"]),
                    "event_time": column([NOW]),
                    "interest_rate": column(["high"]),
                },
            ),
            "INVALID_ARGUMENT",
            "VALUE_TYPE_STRING value where VALUE_TYPE_FLOAT64",
        ),
        (
            lambda s: rr.PushFeaturesRequest(
                feature_view=f"terms_{s}",
                columns={"loan_id": column(["L1"]), "interest_rate": column([1.0])},
            ),
            "INVALID_ARGUMENT",
            "needs 'event_time'",
        ),
        (
            lambda s: rr.PushFeaturesRequest(
                feature_view=f"terms_{s}",
                columns={
                    "loan_id": column(["L1"]),
                    "event_time": column([NOW]),
                    "bogus": column([1]),
                },
            ),
            "INVALID_ARGUMENT",
            "not features",
        ),
        (
            lambda s: rr.PushFeaturesRequest(
                feature_view=f"terms_{s}",
                columns={"loan_id": column(["L1", "L2"]), "event_time": column([NOW])},
            ),
            "INVALID_ARGUMENT",
            "same number of values",
        ),
    ],
    ids=["unknown-view", "batch-view", "wrong-type", "no-event-time", "unknown-column", "ragged"],
)
async def test_bad_pushes(features: FeatureStoreStub, build, code: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    s = suffix()
    await _apply(features, s)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await features.PushFeatures(build(s))
    assert raised.value.code().name == code
    assert fragment in raised.value.details()


async def test_bad_reads(features: FeatureStoreStub) -> None:
    s = suffix()
    await _apply(features, s)
    cases = [
        (
            rr.GetOnlineFeaturesRequest(
                feature_service=f"nope_{s}", entities={"loan_id": column(["L1"])}
            ),
            "NOT_FOUND",
        ),
        (
            rr.GetOnlineFeaturesRequest(
                feature_service=f"uw_{s}", entities={"borrower": column(["B"])}
            ),
            "INVALID_ARGUMENT",
        ),
        (
            rr.GetOnlineFeaturesRequest(
                feature_service=f"uw_{s}", entities={"loan_id": column(["L1"])}
            ),
            "INVALID_ARGUMENT",
        ),
        (rr.GetOnlineFeaturesRequest(entities={"loan_id": column(["L1"])}), "INVALID_ARGUMENT"),
        *(
            (
                rr.GetOnlineFeaturesRequest(
                    feature_list=rr.FeatureList(features=[f"terms_{s}:*"]),
                    entities={"loan_id": column(["L1", bad])},
                ),
                "INVALID_ARGUMENT",
            )
            for bad in ("", 1.5, None)  # keys are non-empty strings or int64
        ),
        (
            rr.GetOnlineFeaturesRequest(
                feature_list=rr.FeatureList(features=[f"terms_{s}:nothing"]),
                entities={"loan_id": column(["L1"])},
            ),
            "INVALID_ARGUMENT",
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await features.GetOnlineFeatures(request)
        assert raised.value.code().name == code, raised.value.details()


async def test_int64_keys_read_the_rows_of_their_decimal_form(features: FeatureStoreStub) -> None:
    s = suffix()
    await _apply(features, s)
    await _push(features, f"terms_{s}", [("42", NOW - timedelta(hours=1), 7.5, 36, "A")])
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"terms_{s}:*"]),
            entities={"loan_id": column([42, "42", 43])},
        )
    )
    first, second, third = response.results
    assert [python(v) for v in first.values] == [7.5, 36, "A"]
    assert first == second
    assert list(third.statuses) == [NOT_FOUND] * 3
