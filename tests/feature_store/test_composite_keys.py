"""Composite entity keys (ADR 0023) against real Postgres and NATS: push, materialize and
stream ingestion keyed by two parts, online reads, point-in-time training sets from Arrow
rows and from a label table, and requests missing a part or giving an extra one.

Keys are chosen so that a naive join of the parts would collide: ("a|b", "c") and
("a", "b|c") are both "a|b|c" joined by "|"; the store keeps them apart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pandas as pd
import pyarrow as pa
import pytest
from nats.js import JetStreamContext

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings, ServiceName
from libs.messaging import EventStreamNames
from libs.sdk.feature_store import FeatureStoreClient, LabelTable
from libs.sdk.features import (
    Aggregation,
    BatchSource,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    PushSource,
    StreamSource,
    String,
    repository_of,
)
from services.feature_store.app.streaming.ingest import ingest_streams
from services.trainer.store.feature_catalog import FeatureCatalog
from tests.feature_store.helpers import column, python, suffix

NOW = datetime.now(UTC).replace(microsecond=0)
PAIRS = [("a|b", "c"), ("a", "b|c"), ("a\\", "|c"), ("a", "\\|c")]
"""Account and merchant ids whose parts hold the separator and the escape."""


def _entity(s: str) -> Entity:
    return Entity(f"acct_merchant_{s}", join_keys=("account_id", "merchant_id"))


async def _apply(features: FeatureStoreStub, *objects: object) -> None:
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of(list(objects)))
    )


async def _online(
    features: FeatureStoreStub, references: list[str], pairs: list[tuple[str, str]]
) -> list[list[tuple[object, int]]]:
    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=references),
            entities={
                "account_id": column([a for a, _ in pairs]),
                "merchant_id": column([b for _, b in pairs]),
            },
        )
    )
    return [
        [(python(v), status) for v, status in zip(r.values, r.statuses, strict=True)]
        for r in response.results
    ]


async def _refused(call: Awaitable[object], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details() or ""


async def test_push_online_and_point_in_time_training_sets(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    entity = _entity(s)
    spend = FeatureView(
        f"spend_{s}",
        entity=entity,
        source=PushSource(),
        ttl=timedelta(days=1),
        features=[Field("amount", Float64), Field("visits", Int64)],
    )
    await _apply(features, entity, spend)
    store = FeatureStoreClient(features)
    rows = [  # (pair, event time, amount): one row ahead of now for the point-in-time check
        (PAIRS[0], NOW - timedelta(hours=3), 1.0),
        (PAIRS[0], NOW - timedelta(hours=1), 2.0),
        (PAIRS[1], NOW - timedelta(hours=2), 10.0),
        (PAIRS[1], NOW + timedelta(hours=1), 20.0),
        (PAIRS[2], NOW - timedelta(hours=1), 100.0),
    ]
    written = await store.push(
        f"spend_{s}",
        {
            "account_id": [a for (a, _), _, _ in rows],
            "merchant_id": [b for (_, b), _, _ in rows],
            "event_time": [t for _, t, _ in rows],
            "amount": [x for _, _, x in rows],
            "visits": [int(x) for _, _, x in rows],
        },
    )
    assert written.rows_written == len(rows)

    online = await _online(features, [f"spend_{s}:amount"], PAIRS)
    assert online == [
        [(2.0, m.FEATURE_STATUS_PRESENT)],
        [(10.0, m.FEATURE_STATUS_PRESENT)],  # the row an hour ahead is not true yet
        [(100.0, m.FEATURE_STATUS_PRESENT)],
        [(None, m.FEATURE_STATUS_NOT_FOUND)],  # ("a", "\\|c") was never written
    ]
    sdk = await store.get_online_features(
        {"account_id": ["a"], "merchant_id": ["b|c"]}, features=[f"spend_{s}:visits"]
    )
    assert sdk[0][f"spend_{s}:visits"].value == 10

    # Rows were pushed (known) now: labels after now see them, as of their own time.
    soon, later = NOW + timedelta(minutes=30), NOW + timedelta(hours=2)
    labels = pd.DataFrame(
        {
            "account_id": [PAIRS[0][0], PAIRS[1][0], PAIRS[1][0], PAIRS[3][0], PAIRS[2][0]],
            "merchant_id": [PAIRS[0][1], PAIRS[1][1], PAIRS[1][1], PAIRS[3][1], PAIRS[2][1]],
            "event_time": pd.to_datetime([soon, soon, later, later, NOW - timedelta(days=2)]),
            "label": [1, 2, 3, 4, 5],
        }
    )
    training = await store.get_historical_features(labels, features=[f"spend_{s}:amount"])
    frame = training.dataframe
    assert list(frame.columns) == [
        "account_id",
        "merchant_id",
        "event_time",
        "label",
        f"spend_{s}:amount",
    ]
    assert frame["label"].tolist() == [1, 2, 3, 4, 5]
    amounts = frame[f"spend_{s}:amount"].tolist()
    assert amounts[:3] == [2.0, 10.0, 20.0]  # the future row counts from its event time on
    assert pd.isna(amounts[3]) and pd.isna(amounts[4])  # never written; not known yet

    # The same labels from a Postgres table, the account under another column's name.
    await db_pool.execute(
        f"CREATE TABLE public.card_labels_{s} "
        "(acct text, merchant_id text, at timestamptz, label bigint)"
    )
    await db_pool.executemany(
        f"INSERT INTO public.card_labels_{s} VALUES ($1, $2, $3, $4)",
        list(
            zip(
                labels["account_id"],
                labels["merchant_id"],
                [t.to_pydatetime().replace(tzinfo=UTC) for t in labels["event_time"]],
                labels["label"].tolist(),
                strict=True,
            )
        ),
    )
    table = LabelTable(
        f"public.card_labels_{s}",
        entity_column={"account_id": "acct"},
        event_time_column="at",
        columns=["label"],
    )
    from_table = await store.get_historical_features(table, features=[f"spend_{s}:amount"])
    got = from_table.dataframe.sort_values("label")
    assert list(got.columns) == list(frame.columns)
    assert got[f"spend_{s}:amount"].tolist()[:3] == [2.0, 10.0, 20.0]
    assert got["merchant_id"].tolist() == frame["merchant_id"].tolist()


async def test_requests_missing_a_key_part_or_giving_an_extra_one_are_refused(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    entity = _entity(s)
    spend = FeatureView(
        f"spend_{s}", entity=entity, source=PushSource(), features=[Field("amount", Float64)]
    )
    await _apply(features, entity, spend, Entity(f"loan_{s}", "loan_id"))
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    selection = rr.FeatureList(features=[f"spend_{s}:*"])
    one, two = column(["a"]), column(["b"])

    async def online(entities: dict[str, m.RepeatedValue]) -> str:
        request = rr.GetOnlineFeaturesRequest(feature_list=selection, entities=entities)
        return await _refused(features.GetOnlineFeatures(request), invalid)

    assert "lacks the join key 'merchant_id'" in await online({"account_id": one})
    details = await online({"account_id": one, "merchant_id": two, "till_id": two})
    assert "'till_id', which is not a join key of the selection" in details
    # Another entity's join key is let through: a caller scoring several models at once
    # sends every model's keys.
    both = {"account_id": one, "merchant_id": two, "loan_id": two}
    served = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(feature_list=selection, entities=both)
    )
    assert served.results[0].statuses == [m.FEATURE_STATUS_NOT_FOUND]

    async def push(columns: dict[str, m.RepeatedValue]) -> str:
        request = rr.PushFeaturesRequest(feature_view=f"spend_{s}", columns=columns)
        return await _refused(features.PushFeatures(request), invalid)

    row = {"event_time": column([NOW]), "amount": column([1.0])}
    assert "needs 'merchant_id'" in await push({**row, "account_id": one})
    details = await push({**row, "account_id": one, "merchant_id": two, "loan_id": two})
    assert "loan_id" in details  # a push names exactly its view's keys

    async def training(request: rr.GetHistoricalFeaturesRequest) -> str:
        async def drain() -> None:
            async for _ in features.GetHistoricalFeatures(request):
                pass

        return await _refused(drain(), invalid)

    arrow = rr.GetHistoricalFeaturesRequest(
        feature_list=selection,
        entity_rows_arrow=await asyncio.to_thread(
            _ipc, pd.DataFrame({"account_id": ["a"], "event_time": pd.to_datetime([NOW])})
        ),
    )
    assert "needs a column 'merchant_id'" in await training(arrow)
    await db_pool.execute(f"CREATE TABLE public.l_{s} (account_id text, at timestamptz)")
    cases = [
        (rr.LabelSource(table=f"public.l_{s}", event_time_column="at"), "merchant_id"),
        (
            rr.LabelSource(
                table=f"public.l_{s}",
                event_time_column="at",
                entity_columns={"store_id": "account_id"},
            ),
            "'store_id', which is not a join key",
        ),
        (
            rr.LabelSource(table=f"public.l_{s}", event_time_column="at", entity_column="a"),
            "entity_columns",
        ),
    ]
    for source, fragment in cases:
        request = rr.GetHistoricalFeaturesRequest(feature_list=selection, label_source=source)
        assert fragment in await training(request)


def _ipc(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


async def test_materialize_a_batch_source_with_a_column_per_key_part(
    features: FeatureStoreStub, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    entity = Entity(
        f"card_merchant_{s}", join_keys=("card_id", "merchant_id"), key_types=(Int64, String)
    )
    await db_pool.execute(
        f"CREATE TABLE public.card_spend_{s} "
        "(card bigint, merchant text, at timestamptz, amount double precision)"
    )
    await db_pool.executemany(
        f"INSERT INTO public.card_spend_{s} VALUES ($1, $2, $3, $4)",
        [
            (4111, "m|1", NOW - timedelta(hours=3), 1.0),
            (4111, "m|1", NOW - timedelta(hours=1), 2.0),
            (4111, "m\\1", NOW - timedelta(hours=2), 3.0),
            (4222, "m|1", NOW - timedelta(hours=2), 4.0),
            (None, "m|1", NOW - timedelta(hours=2), 5.0),  # no key: not read
        ],
    )
    view = FeatureView(
        f"card_spend_{s}",
        entity=entity,
        source=BatchSource(
            f"public.card_spend_{s}", event_time_column="at", entity_columns=("card", "merchant")
        ),
        features=[Field("amount", Float64)],
    )
    await _apply(features, entity, view)
    got = (await features.GetFeatureView(rr.GetFeatureViewRequest(name=view.name))).feature_view
    assert list(got.batch_source.entity_columns) == ["card", "merchant"]

    progress = [
        r.progress
        async for r in features.Materialize(rr.MaterializeRequest(feature_view=view.name))
    ]
    assert progress[-1].done and progress[-1].rows_written == 4

    response = await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{view.name}:amount"]),
            entities={
                "card_id": column([4111, 4111, 4222, 4222]),
                "merchant_id": column(["m|1", "m\\1", "m|1", "m\\1"]),
            },
        )
    )
    assert [python(r.values[0]) for r in response.results] == [2.0, 3.0, 4.0, None]

    # Offline, as of times between the rows' event times (the rows are known from the
    # start: no created-time column), integer keys in the label rows.
    labels = pd.DataFrame(
        {
            "card_id": [4111, 4111, 4222],
            "merchant_id": ["m|1", "m|1", "m|1"],
            "event_time": pd.to_datetime(
                [NOW - timedelta(hours=2), NOW, NOW - timedelta(hours=2, seconds=1)]
            ),
        }
    )
    training = await FeatureStoreClient(features).get_historical_features(
        labels, features=[f"{view.name}:amount"]
    )
    amounts = training.dataframe[f"{view.name}:amount"].tolist()
    assert amounts[:2] == [1.0, 2.0] and pd.isna(amounts[2])
    assert training.dataframe["card_id"].tolist() == [4111, 4111, 4222]  # as sent: int64

    # A table whose merchant column is missing is refused at apply, naming the part.
    await db_pool.execute(f"CREATE TABLE public.no_merchant_{s} (card bigint, at timestamptz)")
    broken = FeatureView(
        f"broken_{s}",
        entity=entity,
        source=BatchSource(
            f"public.no_merchant_{s}", event_time_column="at", entity_columns=("card", "merchant")
        ),
        features=[Field("amount", Float64)],
    )
    details = await _refused(
        features.ApplyDefinitions(rr.ApplyDefinitionsRequest(repository=repository_of([broken]))),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "no column 'merchant' (join key 'merchant_id')" in details


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_stream_ingestion_keys_events_by_every_part(
    features: FeatureStoreStub, js: JetStreamContext, test_settings: LatheSettings
) -> None:
    s = suffix()
    entity = _entity(s)
    view = FeatureView(
        f"card_pay_{s}",
        entity=entity,
        source=StreamSource(
            f"card_src_{s}", event_time_field="at", entity_fields=("account", "merchant")
        ),
        aggregations=[
            Aggregation("", "count", timedelta(hours=1), "n_1h"),
            Aggregation("amount", "sum", timedelta(hours=1), "amount_1h"),
        ],
        allowed_lateness=timedelta(hours=1),
    )
    await _apply(features, entity, view)
    subject = ingest_streams(test_settings.namespace).subject(f"card_src_{s}")
    events = [
        (PAIRS[0], 10.0, timedelta(minutes=20)),
        (PAIRS[0], 20.0, timedelta(minutes=5)),
        (PAIRS[1], 40.0, timedelta(minutes=10)),
        (PAIRS[2], 80.0, timedelta(minutes=1)),
    ]
    for (account, merchant), amount, age in events:
        body = {
            "account": account,
            "merchant": merchant,
            "at": (datetime.now(UTC) - age).isoformat(),
            "amount": amount,
        }
        await js.publish(
            subject, json.dumps(body).encode(), headers={"Nats-Msg-Id": str(uuid.uuid4())}
        )
    await js.publish(  # a part missing: rejected, not counted under some other key
        subject,
        json.dumps({"account": "a", "at": datetime.now(UTC).isoformat(), "amount": 1}).encode(),
        headers={"Nats-Msg-Id": str(uuid.uuid4())},
    )
    expected = [
        [(2, m.FEATURE_STATUS_PRESENT), (30.0, m.FEATURE_STATUS_PRESENT)],
        [(1, m.FEATURE_STATUS_PRESENT), (40.0, m.FEATURE_STATUS_PRESENT)],
        [(1, m.FEATURE_STATUS_PRESENT), (80.0, m.FEATURE_STATUS_PRESENT)],
        [(None, m.FEATURE_STATUS_NOT_FOUND), (None, m.FEATURE_STATUS_NOT_FOUND)],
    ]
    references = [f"card_pay_{s}:n_1h", f"card_pay_{s}:amount_1h"]

    async def counted() -> bool:
        return await _online(features, references, PAIRS) == expected

    await _eventually(counted, "the events in the online windows")

    # Offline, as of now: the same windows from the raw events.
    labels = pd.DataFrame(
        {
            "account_id": [a for a, _ in PAIRS],
            "merchant_id": [b for _, b in PAIRS],
            "event_time": pd.to_datetime([datetime.now(UTC)] * len(PAIRS)),
        }
    )
    training = await FeatureStoreClient(features).get_historical_features(
        labels, features=references
    )
    frame = training.dataframe
    assert frame[references[0]].tolist()[:3] == [2, 1, 1]
    assert frame[references[1]].tolist()[:3] == [30.0, 40.0, 80.0]
    assert pd.isna(frame[references[1]].tolist()[3])

    # A backfill rebuilds the same tiles from the raw events.
    backfilled = await features.BackfillStreamView(
        rr.BackfillStreamViewRequest(feature_view=view.name)
    )
    assert backfilled.events_used == len(events)
    assert sum(backfilled.rejected.values()) == 1
    assert await _online(features, references, PAIRS) == expected


async def test_an_entitys_keys_cannot_change(features: FeatureStoreStub) -> None:
    s = suffix()
    await _apply(features, _entity(s))
    reordered = Entity(f"acct_merchant_{s}", join_keys=("merchant_id", "account_id"))
    plan = await features.PlanDefinitions(
        rr.PlanDefinitionsRequest(repository=repository_of([reordered]))
    )
    assert not plan.applicable and plan.changes[0].blocked
    assert "join keys (account_id string, merchant_id string) ->" in plan.changes[0].details[0]
    await _refused(
        features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=repository_of([reordered]))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_the_trainer_reads_every_key_part_of_a_feature_service(
    features: FeatureStoreStub, js: JetStreamContext, test_settings: LatheSettings
) -> None:
    s = suffix()
    entity = _entity(s)
    spend = FeatureView(
        f"spend_{s}", entity=entity, source=PushSource(), features=[Field("amount", Float64)]
    )
    await _apply(features, entity, spend, FeatureService(f"fraud_{s}", [f"spend_{s}:*"]))
    catalog = FeatureCatalog(
        js, EventStreamNames(test_settings.namespace, ServiceName.FEATURE_STORE.value)
    )

    async def published() -> bool:
        return await catalog.feature_service(f"fraud_{s}") is not None

    await _eventually(published, "the feature service's definition events")
    info = await catalog.feature_service(f"fraud_{s}")
    assert info is not None and info.join_keys == ("account_id", "merchant_id")
