"""Step: a servicing system publishes repayment events to ``lathe.ingest.payments``; the
feature store aggregates them (30- and 90-day windows) as they arrive.

The producer is what any product system would run: JSON objects on a JetStream subject,
each with a ``Nats-Msg-Id`` (the ledger's event id), so a re-published event is counted
once. The step then waits until the feature store serves every event the windows hold.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from libs.cli.demo.context import DemoRun, Step
from libs.cli.demo.data import Payment, servicing_ledger
from libs.messaging import connect_nats

SOURCE = "payments"
COUNT_FEATURE = "repayments:payments_90d"
_WINDOW = timedelta(days=90)
_TILE = timedelta(days=1)
_CHUNK = 500
_PATIENCE_S = 120.0


async def stream_payments(run: DemoRun) -> None:
    assert run.state is not None
    conn = await asyncpg.connect(run.state.database_url)
    try:
        ledger = await servicing_ledger(conn, run.loans)
    finally:
        await conn.close()
    subject = f"{run.state.namespace}.ingest.{SOURCE}"
    producer = await connect_nats(run.state.nats_url, name="servicing-ledger-producer")
    try:
        js = producer.jetstream()
        with run.progress(f"publish repayment events to {subject}", len(ledger)) as bar:
            for start in range(0, len(ledger), _CHUNK):
                pending = [
                    await js.publish_async(
                        subject,
                        json.dumps(payment.json()).encode(),
                        headers={"Nats-Msg-Id": str(payment.event_id)},
                    )
                    for payment in ledger[start : start + _CHUNK]
                ]
                acks = await asyncio.gather(*pending)
                bar.advance(len(acks))
                bar.update(detail=f"{sum(1 for a in acks if a.duplicate):,} already published")
    finally:
        await producer.close()
    example = ledger[-1].json()
    run.console.print(f"e.g. {json.dumps(example)}")

    expected = _in_window(ledger, datetime.now(UTC))
    with run.progress("feature store aggregates them (repayments view)", expected) as bar:
        counted = await _wait_until_counted(run, expected, bar)
    run.labels_after = datetime.now(UTC)  # every event counted so far arrived before this
    run.console.print(
        f"{len(ledger):,} repayment events of {len(run.loans):,} loans; the 90-day windows "
        f"now hold {counted:,} of them (events are deduplicated by id: a second run "
        "publishes the same ledger and changes nothing)"
    )
    run.report["payments"] = {"published": len(ledger), "in_windows": counted}


async def _wait_until_counted(run: DemoRun, expected: int, bar: object) -> int:
    deadline = time.monotonic() + _PATIENCE_S
    counted = -1
    while True:
        rows = await run.c.features.get_online_features(
            {"loan_id": run.loans}, features=[COUNT_FEATURE]
        )
        counted = sum(int(row[COUNT_FEATURE].value or 0) for row in rows)
        bar.update(counted)  # type: ignore[attr-defined]
        if counted >= expected:
            return counted
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the feature store counted {counted} of {expected} repayment events within "
                f"{_PATIENCE_S:.0f}s; see `lathe logs feature-store`"
            )
        await asyncio.sleep(0.3)


def _in_window(ledger: list[Payment], now: datetime) -> int:
    """Events a 90-day window read now holds (it starts at a whole tile: precision one tile)."""
    first_tile = _floor(now) - _WINDOW + _TILE
    return sum(1 for p in ledger if _floor(p.paid_at) >= first_tile and p.paid_at <= now)


def _floor(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


STEP = Step(f"Stream: repayment events on lathe.ingest.{SOURCE}", stream_payments)
