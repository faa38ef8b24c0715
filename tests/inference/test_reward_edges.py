"""The reward join and ListDecisions against real Postgres, without a service around them:
every outcome ends joined or refused (never failing its batch), a late outcome never
turns a reported CENSORED into JOINED, and paging never skips a decision written within
the listing horizon (the logger's flush delay)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from libs.db import apply_migrations, load_migrations
from libs.eventstore import EventStore, RawDelivery
from services.inference import service
from services.inference.api.servicer import InferenceServicer
from services.inference.app.decision_log import DecisionLog
from services.inference.app.rewards import RewardJoiner
from services.inference.store import decisions
from services.inference.store.decisions import insert_decisions

pytestmark = pytest.mark.asyncio(loop_scope="session")
WINDOW_S = 3600.0
_MIGRATIONS = Path(service.__file__).parent / "migrations"


@pytest_asyncio.fixture(loop_scope="session")
async def joiner(db_pool: asyncpg.Pool, event_store: EventStore) -> AsyncIterator[RewardJoiner]:
    """The inference tables (as a service start leaves them) and a joiner on a fresh event
    store (the joiner's events stay out of any running service's relay)."""
    async with db_pool.acquire() as conn:
        await apply_migrations(conn, "inference", load_migrations("inference", _MIGRATIONS))
    yield RewardJoiner(event_store, {}, WINDOW_S)


def _logged(model: str, decision_id: str, at: datetime, version: int = 1) -> ev.PredictionLogged:
    """A policy's served decision, as its log event."""
    log = ev.PredictionLogged(
        decision_id=decision_id,
        model_name=model,
        model_version=version,
        chosen_action="a",
        action_probabilities=[1.0],
        arm=m.ARM_PRIMARY,
    )
    log.predict_time.FromDatetime(at)
    return log


async def _decide(
    conn: asyncpg.Connection, model: str, decision_id: str, at: datetime, version: int = 1
) -> None:
    log = _logged(model, decision_id, at, version)
    await insert_decisions(conn, [log], [log.SerializeToString()])


def _delivery(document: object, arrived: datetime | None = None, raw: bytes = b"") -> RawDelivery:
    return RawDelivery(
        event_id=uuid.uuid4(),
        subject="test.ingest.outcomes",
        data=raw or json.dumps(document).encode(),
        headers={},
        stream_sequence=1,
        arrival_time=arrived or datetime.now(UTC),
        delivery_attempt=1,
    )


def _outcome(decision_id: object, reward_time: datetime, **fields: object) -> dict[str, object]:
    return {
        "decision_id": decision_id,
        "reward": 1.0,
        "reward_time": reward_time.isoformat(),
        "reward_definition": "margin",
        "reward_definition_version": 1,
        **fields,
    }


async def _handle(db_pool: asyncpg.Pool, joiner: RewardJoiner, *deliveries: RawDelivery) -> None:
    async with db_pool.acquire() as conn, conn.transaction():
        await joiner.handle(list(deliveries), conn)


async def _fate(db_pool: asyncpg.Pool, delivery: RawDelivery) -> tuple[str, str]:
    """("joined", "") or (refusal reason, detail) of one outcome."""
    outcome_id = str(delivery.event_id)
    refused = await db_pool.fetchrow(
        "SELECT reason, detail FROM inference.reward_refusals WHERE outcome_id = $1", outcome_id
    )
    if refused is not None:
        return refused["reason"], refused["detail"]
    joined = await db_pool.fetchval(
        "SELECT count(*) FROM inference.rewards WHERE outcome_id = $1", outcome_id
    )
    return ("joined", "") if joined == 1 else ("lost", "")


async def test_every_outcome_is_joined_or_refused_once_whatever_it_holds(
    db_pool: asyncpg.Pool, joiner: RewardJoiner
) -> None:
    known = f"d-{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    async with db_pool.acquire() as conn:
        await _decide(conn, f"edge-{uuid.uuid4().hex[:8]}", known, now - timedelta(minutes=1))
    at = now
    cases = {
        "huge reward literal": _delivery(None, raw=json.dumps(_outcome(known, at)).encode()
                                         .replace(b'"reward": 1.0', b'"reward": 1' + b"0" * 400)),
        "5000-digit reward": _delivery(None, raw=json.dumps(_outcome(known, at)).encode()
                                       .replace(b'"reward": 1.0', b'"reward": ' + b"9" * 5000)),
        "version 2**31, known": _delivery(_outcome(known, at, reward_definition_version=2**31)),
        "version 2**31, unknown": _delivery(_outcome("nope", at, reward_definition_version=2**31)),
        "NUL in the id": _delivery(_outcome("d\x00", at)),
        "NUL in the definition": _delivery(_outcome(known, at, reward_definition="m\x00")),
        "CRLF in the definition": _delivery(_outcome(known, at, reward_definition="m\r\nA: b")),
        "lone surrogate": _delivery(None, raw=json.dumps(_outcome("x", at)).encode()
                                    .replace(b'"x"', b'"\\udc00"')),
        "3000-byte id": _delivery(_outcome("x" * 3000, at)),
        "300-byte definition": _delivery(_outcome("nope", at, reward_definition="m" * 300)),
        "500 kB reward_time": _delivery(_outcome(known, at) | {"reward_time": "2" * 500_000}),
        "year 0 in UTC": _delivery(_outcome(known, at) | {"reward_time": "0001-01-01T00:00+01:00"}),
        "deep nesting": _delivery(None, raw=b'{"a":' * 50_000),
        "not UTF-8": _delivery(None, raw=b"\xff\xfe\x00"),
        "good": _delivery(_outcome(known, at)),
    }  # fmt: skip
    for delivery in cases.values():  # one at a time: a batch that failed would hide which
        await _handle(db_pool, joiner, delivery)
    fates = {name: (await _fate(db_pool, d))[0] for name, d in cases.items()}
    assert fates == {**{name: "malformed" for name in cases}, "good": "joined"}
    counted = await db_pool.fetchval(
        "SELECT count(*) FROM inference.reward_refusals WHERE outcome_id = ANY($1::text[])",
        [str(d.event_id) for d in cases.values()],
    )
    assert counted == len(cases) - 1


async def test_one_decision_id_under_two_models_keeps_both_and_an_outcome_joins_each(
    db_pool: asyncpg.Pool, joiner: RewardJoiner
) -> None:
    """Two policies asked about one application under its id: before, the second model's
    decision was dropped and its rewards joined the first model's decision."""
    shared, suffix = f"app-{uuid.uuid4().hex}", uuid.uuid4().hex[:8]
    line, apr = f"line-{suffix}", f"apr-{suffix}"
    now = datetime.now(UTC)
    async with db_pool.acquire() as conn:
        await _decide(conn, line, shared, now - timedelta(minutes=2))
        await _decide(conn, apr, shared, now - timedelta(minutes=1))
    outcome = _delivery(_outcome(shared, now))

    await _handle(db_pool, joiner, outcome)
    again = _delivery(_outcome(shared, now))
    await _handle(db_pool, joiner, again)

    stored = await db_pool.fetch(
        "SELECT model_name FROM inference.decisions WHERE decision_id = $1", shared
    )
    joined = await db_pool.fetch(
        "SELECT model_name FROM inference.rewards WHERE outcome_id = $1", str(outcome.event_id)
    )
    assert sorted(r["model_name"] for r in stored) == sorted([line, apr])
    assert sorted(r["model_name"] for r in joined) == sorted([line, apr])
    assert (await _fate(db_pool, again))[0] == "duplicate"


async def test_the_latest_decision_under_an_id_stands_until_a_reward_joins_it(
    db_pool: asyncpg.Pool, joiner: RewardJoiner
) -> None:
    """A client's retry after a lost answer is made later than the attempt, and its answer
    (perhaps from another version) is the one the client acted on: it replaces the attempt,
    whichever is written first, in one batch or two; once a reward joined, nothing does."""
    model, decision_id = f"retry-{uuid.uuid4().hex[:8]}", f"d-{uuid.uuid4().hex}"
    now = datetime.now(UTC)

    async def stored_version() -> int:
        return int(
            await db_pool.fetchval(
                "SELECT model_version FROM inference.decisions "
                "WHERE model_name = $1 AND decision_id = $2",
                model,
                decision_id,
            )
        )

    async with db_pool.acquire() as conn:
        attempt = _logged(model, decision_id, now - timedelta(minutes=3), version=1)
        retry = _logged(model, decision_id, now - timedelta(minutes=2), version=2)
        await insert_decisions(conn, [retry, attempt], [b"retry", b"attempt"])  # one batch
        assert await stored_version() == 2
        await _decide(conn, model, decision_id, now - timedelta(minutes=4), version=3)  # late
        assert await stored_version() == 2
        await _decide(conn, model, decision_id, now - timedelta(minutes=1), version=4)
        assert await stored_version() == 4
    await _handle(db_pool, joiner, _delivery(_outcome(decision_id, now)))
    async with db_pool.acquire() as conn:
        await _decide(conn, model, decision_id, now, version=5)
    assert await stored_version() == 4


async def test_an_outcome_arriving_after_the_window_never_joins_a_censored_decision(
    db_pool: asyncpg.Pool, joiner: RewardJoiner
) -> None:
    model = f"late-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old, fresh, edge = (f"{k}-{uuid.uuid4().hex[:8]}" for k in ("old", "fresh", "edge"))
    decided = {
        old: now - timedelta(hours=2),  # window closed an hour ago: CENSORED
        fresh: now - timedelta(minutes=10),
        edge: now - timedelta(seconds=WINDOW_S + 20),  # closed 20 s ago, within the grace
    }
    async with db_pool.acquire() as conn:
        for decision_id, at in decided.items():
            await _decide(conn, model, decision_id, at)
    servicer = InferenceServicer(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        max_rows=1,
        decisions=DecisionLog(db_pool, joiner.window_s),
    )

    async def statuses() -> dict[str, int]:
        page = await servicer.ListDecisions(
            rr.ListDecisionsRequest(
                model_name=model, reward_definition="margin", reward_definition_version=1
            ),
            None,  # type: ignore[arg-type]
        )
        return {d.decision.decision_id: d.reward_status for d in page.decisions}

    before = await statuses()
    assert before == {
        old: m.REWARD_STATUS_CENSORED,
        fresh: m.REWARD_STATUS_PENDING,
        edge: m.REWARD_STATUS_PENDING,  # a join may still come: not censored yet
    }
    five = timedelta(minutes=5)
    published_now = _delivery(_outcome(old, decided[old] + five))  # stamped inside, sent late
    handled_late = _delivery(  # reached JetStream in time, handled an hour after the close
        _outcome(old, decided[old] + five, reward_definition_version=1),
        arrived=decided[old] + timedelta(minutes=50),
    )
    in_time = _delivery(_outcome(fresh, decided[fresh] + five))
    in_grace = _delivery(
        _outcome(edge, decided[edge] + five), arrived=decided[edge] + timedelta(minutes=59)
    )
    for delivery in (published_now, handled_late, in_time, in_grace):
        await _handle(db_pool, joiner, delivery)
    late = await _fate(db_pool, published_now)
    assert late[0] == "arrived_late" and "reached JetStream" in late[1], late
    slow = await _fate(db_pool, handled_late)
    assert slow[0] == "arrived_late" and "was handled" in slow[1], slow
    assert (await _fate(db_pool, in_time))[0] == "joined"
    assert (await _fate(db_pool, in_grace))[0] == "joined"
    after = await statuses()
    assert after == {
        old: m.REWARD_STATUS_CENSORED,  # reported censored, stays censored
        fresh: m.REWARD_STATUS_JOINED,
        edge: m.REWARD_STATUS_JOINED,
    }


async def test_paging_never_skips_a_decision_written_within_the_horizon(
    db_pool: asyncpg.Pool, joiner: RewardJoiner
) -> None:
    """A decision is written at the logger's flush, after later ones may have been: a
    listing ends the horizon before now, so its cursor never passes one still to come."""
    assert decisions.LISTING_HORIZON_S >= 1.5, "the timings below leave it 1 s of slack"
    model = f"pages-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    first, held, last = (f"{k}-{uuid.uuid4().hex[:8]}" for k in ("first", "held", "last"))
    servicer = InferenceServicer(
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        max_rows=1,
        decisions=DecisionLog(db_pool, joiner.window_s),
    )

    async def page(token: str) -> rr.ListDecisionsResponse:
        return await servicer.ListDecisions(  # type: ignore[no-any-return]
            rr.ListDecisionsRequest(
                model_name=model,
                reward_definition="margin",
                reward_definition_version=1,
                page_size=1,
                page_token=token,
            ),
            None,  # type: ignore[arg-type]
        )

    seen: list[str] = []
    token = ""  # the last token a page gave: where the listing goes on

    async def read_on(seconds: float, want: set[str] | None = None) -> None:
        nonlocal token
        until = time.monotonic() + seconds
        while time.monotonic() < until and not (want and want <= set(seen)):
            answer = await page(token)
            seen.extend(d.decision.decision_id for d in answer.decisions)
            if answer.next_page_token:
                token = answer.next_page_token
            elif not answer.decisions:
                await asyncio.sleep(0.05)  # the end for now: read on from the last token

    async with db_pool.acquire() as conn:
        await _decide(conn, model, first, now - timedelta(seconds=30))
    # One replica's flush of a decision is still open while another's, of a later
    # decision, commits.
    async with db_pool.acquire() as writer:
        flush = writer.transaction()
        await flush.start()
        await _decide(writer, model, held, now)
        async with db_pool.acquire() as conn:
            await _decide(conn, model, last, now + timedelta(milliseconds=50))
        await read_on(0.5)
        assert seen == [first]  # the cursor waits before the horizon
        await flush.commit()
    await read_on(8.0, want={first, held, last})
    assert seen == [first, held, last]  # each once, in decide-time order, none skipped
