"""Step: a servicing system publishes repayment events to ``lathe.ingest.payments``; the
feature store aggregates them (30- and 90-day windows) as they arrive.

The producer is what any product system would run: JSON objects on a JetStream subject,
each with a ``Nats-Msg-Id`` (the ledger's event id), so a re-published event is counted
once. The step then waits until the feature store's ingest consumer has committed all of
them, and reads three loans' aggregates online.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import asyncpg
from nats.js import JetStreamContext
from rich.table import Table

from libs.cli.demo.context import FEATURE_SERVICE, Bar, DemoRun, Step
from libs.cli.demo.data import Payment, servicing_ledger
from libs.messaging import EventStreamNames, connect_nats

SOURCE = "payments"
INGEST_CONSUMER = "feature-store-stream-aggregations"
"""The feature store's durable consumer of ``<namespace>.ingest.>`` (ADR 0007)."""
_SHOWN = ("payments_90d", "paid_30d", "shortfall_90d", "days_late_mean_90d", "days_late_max_90d")
_CHUNK = 500
_PATIENCE_S = 120.0


async def stream_payments(run: DemoRun) -> None:
    assert run.state is not None
    conn = await asyncpg.connect(run.state.database_url)
    try:
        ledger = await servicing_ledger(conn, run.loans)
    finally:
        await conn.close()
    names = EventStreamNames(run.state.namespace, "ingest")
    subject = names.subject(SOURCE)
    producer = await connect_nats(run.state.nats_url, name="servicing-ledger-producer")
    try:
        js = producer.jetstream()
        last_sequence, duplicates = 0, 0
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
                last_sequence = max(last_sequence, *(a.seq for a in acks))
                duplicates += sum(1 for a in acks if a.duplicate)
                bar.advance(len(acks))
                bar.update(detail=f"{duplicates:,} already in the stream")
        run.console.print(f"e.g. {json.dumps(ledger[-1].json())}")
        with run.progress("the feature store ingests them (repayments view)", None) as bar:
            await _wait_until_ingested(js, names.stream, last_sequence, bar)
    finally:
        await producer.close()
    run.labels_after = datetime.now(UTC)  # every event ingested so far arrived before this

    sample = _sample(ledger)
    # Read through the feature service (as inference will): the feature store starts
    # keeping every loan's reply ready for it now, while the models train.
    rows = await run.c.features.get_online_features({"loan_id": sample}, FEATURE_SERVICE)
    table = Table("loan", *_SHOWN, title=f"GetOnlineFeatures({FEATURE_SERVICE}), repayments")
    for loan, row in zip(sample, rows, strict=True):
        table.add_row(loan, *(_text(row[f"repayments:{f}"].value) for f in _SHOWN))
    run.console.print(table)
    run.console.print(
        f"{len(ledger):,} repayment events of {len(run.loans):,} loans, aggregated exactly "
        "once (events are deduplicated by id: a second run publishes the same ledger and "
        "changes nothing)"
    )
    run.report["payments"] = {"published": len(ledger), "already_in_stream": duplicates}


async def _wait_until_ingested(
    js: JetStreamContext, stream: str, last_sequence: int, bar: Bar
) -> None:
    """Until the feature store's ingest consumer has acknowledged (committed) every message
    up to ``last_sequence``: it acknowledges a batch once its effects are in Postgres."""
    deadline = time.monotonic() + _PATIENCE_S
    first: int | None = None
    while True:
        info = await js.consumer_info(stream, INGEST_CONSUMER)
        done = info.ack_floor.stream_seq if info.ack_floor else 0
        first = done if first is None else first
        bar.update(
            max(done - first, 0),
            total=max(last_sequence - first, 1),
            detail=f"stream sequence {done:,} of {last_sequence:,}",
        )
        if done >= last_sequence:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the feature store ingested up to sequence {done} of {last_sequence} within "
                f"{_PATIENCE_S:.0f}s; see `lathe logs feature-store`"
            )
        await asyncio.sleep(0.3)


def _sample(ledger: list[Payment]) -> list[str]:
    """Three loans worth showing: one paid short, one paid late, one on time."""
    short = next((p.loan_id for p in ledger if p.shortfall > 0), None)
    late = next((p.loan_id for p in ledger if p.days_late > 15 and p.loan_id != short), None)
    troubled = {p.loan_id for p in ledger if p.shortfall > 0 or p.days_late > 0}
    clean = next((p.loan_id for p in reversed(ledger) if p.loan_id not in troubled), None)
    chosen = [loan for loan in (short, late, clean) if loan is not None]
    return chosen or [ledger[-1].loan_id]


def _text(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


STEP = Step(f"Stream: repayment events on lathe.ingest.{SOURCE}", stream_payments)
