"""`lathe features ...` against a real feature store, as an engineer types it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.config import LatheSettings
from libs.sdk.features import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    PushSource,
    StreamSource,
    repository_of,
)
from services.feature_store.app.streaming.backfill import import_events
from services.feature_store.store import tiles
from services.feature_store.store.stream_events import RawEvent
from tests.feature_store.helpers import suffix
from tests.support.cli import run_lathe


async def _lathe(settings: LatheSettings, *args: str) -> tuple[int, str]:
    return await run_lathe(settings, "features", *args)


async def test_backfill_a_stream_view_over_logged_history(
    features: FeatureStoreStub, test_settings: LatheSettings, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    payments = FeatureView(
        f"payments_{s}",
        entity=loan,
        source=StreamSource(f"src_{s}", event_time_field="at"),
        aggregations=[Aggregation("amount", "sum", timedelta(days=7), "amount_sum_7d")],
        allowed_lateness=timedelta(days=1),
    )
    pushed = FeatureView(
        f"pushed_{s}", entity=loan, source=PushSource(), features=[Field("x", Float64)]
    )
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, payments, pushed]))
    )
    now = datetime.now(UTC)
    history = [
        RawEvent(
            uuid.uuid4(),
            i,
            now - timedelta(hours=i),
            json.dumps(
                {"loan_id": "L1", "at": (now - timedelta(hours=i)).isoformat(), "amount": i}
            ).encode(),
        )
        for i in range(1, 4)
    ]
    await import_events(db_pool, f"src_{s}", [*history, RawEvent(uuid.uuid4(), 9, now, b"{")])

    code, output = await _lathe(test_settings, "backfill", f"payments_{s}")

    assert code == 0, output
    assert f"payments_{s} v1: 3 of 4 events used" in output
    assert "rejected (not_json): 1" in output
    assert await tiles.all_tiles(db_pool, f"payments_{s}", 1) != {}

    code, refused = await _lathe(test_settings, "backfill", f"pushed_{s}")
    assert code == 1 and "FAILED_PRECONDITION" in refused and "Materialize" in refused


async def test_deprecate_and_delete_from_the_command_line(
    features: FeatureStoreStub, test_settings: LatheSettings, db_pool: asyncpg.Pool
) -> None:
    s = suffix()
    loan = Entity(f"loan_{s}", join_key="loan_id")
    pushed = FeatureView(
        f"pushed_{s}", entity=loan, source=PushSource(), features=[Field("x", Float64)]
    )
    service = FeatureService(f"model_{s}", [f"pushed_{s}:*"])
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=repository_of([loan, pushed, service]))
    )

    code, output = await _lathe(
        test_settings, "deprecate", "feature_view", f"pushed_{s}", "--reason", "use pushed_v2"
    )
    assert code == 0 and f"deprecated feature_view pushed_{s}" in output, output
    view = await features.GetFeatureView(rr.GetFeatureViewRequest(name=f"pushed_{s}"))
    assert view.deprecation == "use pushed_v2"

    code, refused = await _lathe(test_settings, "delete", "feature_view", f"pushed_{s}")
    assert code == 1 and "FAILED_PRECONDITION" in refused and f"model_{s}" in refused

    code, output = await _lathe(test_settings, "delete", "feature_service", f"model_{s}")
    assert code == 0, output
    code, output = await _lathe(
        test_settings, "delete", "feature_view", f"pushed_{s}", "--reason", "replaced"
    )
    assert code == 0 and "its latest version was 1" in output, output
    events = await db_pool.fetch(
        "SELECT causation_id FROM feature_store.events WHERE stream_id = $1 "
        "AND event_type LIKE '%Deleted'",
        f"feature_view-pushed_{s}",
    )
    assert len(events) == 1 and events[0]["causation_id"]  # sent with a request id
