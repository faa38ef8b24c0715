"""The prediction logger against real Postgres: a refused log, a lost commit answer, memory.

- A log Postgres refuses for what it holds (here: a NUL character, which text cannot
  store) is dropped alone; the logs batched with it and after it are written.
- A commit whose answer is lost (the connection drops right after COMMIT) is retried as
  the same stream and found written: no log is written twice.
- The buffer holds at most a bounded number of request rows: a request whose logs would
  pass it has all of them dropped, none kept half.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from lathe.inference.v1 import events_pb2 as ev
from libs.db import transaction
from libs.eventstore import EventStore
from services.inference.app import prediction_log
from services.inference.app.prediction_log import PredictionLogger

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _log(decision_id: str) -> ev.PredictionLogged:
    return ev.PredictionLogged(decision_id=decision_id, model_name="m", model_version=1)


async def _logged(store: EventStore) -> list[str]:
    """Decision ids of the logs written, one per event."""
    rows = await store.pool.fetch(
        f"SELECT correlation_id FROM {store.schema}.events "
        "WHERE event_type = 'lathe.inference.v1.PredictionLogged' ORDER BY global_position"
    )
    return [r["correlation_id"] for r in rows]


async def test_a_log_postgres_refuses_is_dropped_alone(event_store: EventStore) -> None:
    logger = PredictionLogger(event_store, sample_rate=1.0, capacity=1000)
    ids = [f"d-{i}" for i in range(40)]
    for decision_id in ids[:20]:
        logger.offer(_log(decision_id))
    logger.offer(_log("bad\x00id"))
    for decision_id in ids[20:]:
        logger.offer(_log(decision_id))

    await logger.flush()

    assert await _logged(event_store) == ids
    assert (logger.written, logger.dropped, logger.pending) == (40, 1, 0)


async def test_a_lost_commit_answer_writes_nothing_twice(
    event_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextlib.asynccontextmanager
    async def answer_lost(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        async with transaction(pool) as conn:
            yield conn
        raise asyncpg.ConnectionDoesNotExistError("connection lost after COMMIT was sent")

    logger = PredictionLogger(event_store, sample_rate=1.0, capacity=1000)
    ids = [f"d-{uuid.uuid4().hex}" for _ in range(30)]
    for decision_id in ids:
        logger.offer(_log(decision_id))
    monkeypatch.setattr(prediction_log, "transaction", answer_lost)
    await logger.flush()
    assert logger.pending == 30  # as far as the logger knows, nothing was written

    monkeypatch.undo()
    await logger.flush()

    assert await _logged(event_store) == ids
    assert (logger.written, logger.dropped, logger.pending) == (30, 0, 0)


async def test_a_request_past_the_held_rows_bound_has_all_its_logs_dropped() -> None:
    logger = PredictionLogger(
        None,  # type: ignore[arg-type]  # never flushed: the bound is checked at offer
        sample_rate=1.0,
        capacity=1000,
        max_request_rows=1000,
    )

    def builders(n: int) -> list[prediction_log.LogSource]:
        return [lambda: _log("d") for _ in range(n)]

    assert logger.offer_request(builders(3), "", request_rows=600)
    assert not logger.offer_request(builders(2), "", request_rows=600)
    assert logger.offer_request(builders(2), "", request_rows=400)

    assert (logger.pending, logger.dropped) == (5, 2)


async def test_while_postgres_is_away_the_writer_backs_off_and_says_so_once(
    event_store: EventStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests keep waking the writer; before, each wake was a connection attempt and a
    warning (72 a second in a 20 s outage under load), flooding a recovering Postgres."""
    tries = 0

    @contextlib.asynccontextmanager
    async def away(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
        nonlocal tries
        tries += 1
        raise ConnectionRefusedError("Postgres is away")
        yield  # never reached: the connection is refused first

    caplog.set_level(logging.WARNING, logger=prediction_log.__name__)
    logger = PredictionLogger(
        event_store, sample_rate=1.0, capacity=100_000, flush_rows=1, flush_interval_s=0.05
    )
    monkeypatch.setattr(prediction_log, "transaction", away)
    stop = asyncio.Event()
    writer = asyncio.create_task(logger.run(stop))
    ids = [f"d-{uuid.uuid4().hex}" for _ in range(300)]
    for decision_id in ids:  # a request every 5 ms, each waking the writer
        logger.offer(_log(decision_id))
        await asyncio.sleep(0.005)
    during = tries

    monkeypatch.undo()
    deadline = asyncio.get_running_loop().time() + 15
    while logger.written < len(ids):
        assert asyncio.get_running_loop().time() < deadline, "not written once Postgres is back"
        await asyncio.sleep(0.05)
    stop.set()
    await writer

    assert during <= 10  # 0.05 s doubling to 5 s over ~1.5 s: ~6 tries, not ~300
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "could not write" in m]) == 1
    assert len([m for m in messages if "takes prediction logs again" in m]) == 1
    assert sorted(await _logged(event_store)) == sorted(ids)
