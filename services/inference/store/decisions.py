"""Logged decisions and their rewards (``inference.decisions``, ``.rewards``,
``.reward_refusals``): written with the events they fold, read by ListDecisions.

A decision row is written in the same transaction as its ``PredictionLogged`` event (the
logger's flush); a reward row, or a refusal row, in the same transaction as the
outcome consumer's processed-message record and its ``RewardJoined``/``RewardRefused``
event. A decision is keyed by (model, decision id): two models asked under one id (an
application's) each keep theirs. Of one model's decisions under one id, the latest made
stands: a client's retry after a lost answer is made later than the attempt, and the
retry's answer is the one it acted on (another version may have served it). A reward is
keyed by (model, decision id, definition, version): a second one for the same decision is
a duplicate, whichever process sees it.

Pages of decisions follow (decide time, decision id) and end ``LISTING_HORIZON_S`` (2 s)
before Postgres's clock: a decision is written at the logger's flush (0.2 s after it was made),
so a page never reaches decisions that may still be written before its cursor. (Ordering
by the writing transaction instead would never skip even a decision held back through a
Postgres outage, but transaction ids are local to a cluster: after a dump and restore
every old row would sort after the new ones and stay hidden.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m

_INSERT_DECISIONS = """
    INSERT INTO inference.decisions AS d
        (decision_id, model_name, model_version, decide_time, payload)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bytea[])
    ON CONFLICT (model_name, decision_id) DO UPDATE
        SET model_version = excluded.model_version,
            decide_time = excluded.decide_time,
            payload = excluded.payload
        WHERE excluded.decide_time > d.decide_time
          AND NOT EXISTS (
              SELECT 1 FROM inference.rewards r
              WHERE r.model_name = d.model_name AND r.decision_id = d.decision_id)"""
_DECISIONS_OF_ID = """
    SELECT model_name, model_version, decide_time, clock_timestamp() AS checked_at
    FROM inference.decisions WHERE decision_id = $1 ORDER BY model_name"""
_INSERT_REWARD = """
    INSERT INTO inference.rewards
        (model_name, decision_id, definition, definition_version, reward, reward_time,
         outcome_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (model_name, decision_id, definition, definition_version) DO NOTHING
    RETURNING decision_id"""
_INSERT_REFUSAL = """
    INSERT INTO inference.reward_refusals
        (outcome_id, decision_id, definition, definition_version, reason, detail)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (outcome_id) DO NOTHING"""
_PAGE = """
    SELECT d.decision_id, d.decide_time, d.payload, r.reward, r.reward_time,
           statement_timestamp() AS read_at
    FROM inference.decisions d
    LEFT JOIN inference.rewards r
        ON r.model_name = d.model_name AND r.decision_id = d.decision_id
       AND r.definition = $2 AND r.definition_version = $3
    WHERE d.model_name = $1 AND d.decide_time >= $4
      AND d.decide_time < least($5, statement_timestamp() - make_interval(secs => $9))
      AND (d.decide_time, d.decision_id) > ($6, $7)
    ORDER BY d.decide_time, d.decision_id
    LIMIT $8"""
_COUNT_REFUSALS = """
    SELECT reason, count(*) AS n FROM inference.reward_refusals
    WHERE ($1 = '' OR definition = $1) GROUP BY reason"""


async def insert_decisions(
    conn: asyncpg.Connection, logs: Sequence[ev.PredictionLogged], payloads: Sequence[bytes]
) -> int:
    """Rows for the logs that are a policy's served decision (not shadow), with their
    events' payloads (the same message, already serialised); how many."""
    latest: dict[tuple[str, str], tuple[ev.PredictionLogged, bytes]] = {}
    for log, payload in zip(logs, payloads, strict=True):
        if not (log.chosen_action and log.action_probabilities and log.arm != m.ARM_SHADOW):
            continue
        key = (log.model_name, log.decision_id)
        kept = latest.get(key)
        # One row per key and statement (ON CONFLICT cannot update a row twice): a retry
        # logged in the same batch as its attempt wins here as it would in the table.
        if kept is None or _decided_at(log) > _decided_at(kept[0]):
            latest[key] = (log, payload)
    rows = list(latest.values())
    if not rows:
        return 0
    await conn.execute(
        _INSERT_DECISIONS,
        [log.decision_id for log, _ in rows],
        [log.model_name for log, _ in rows],
        [log.model_version for log, _ in rows],
        [log.predict_time.ToDatetime(tzinfo=UTC) for log, _ in rows],
        [payload for _, payload in rows],
    )
    return len(rows)


def _decided_at(log: ev.PredictionLogged) -> tuple[int, int]:
    return (log.predict_time.seconds, log.predict_time.nanos)


@dataclass(frozen=True)
class DecisionRef:
    """A logged decision, as the reward join needs it."""

    model_name: str
    model_version: int
    decide_time: datetime
    checked_at: datetime
    """Postgres's clock when it was read (the clock statuses are reported with)."""


async def decisions_of_id(conn: asyncpg.Connection, decision_id: str) -> list[DecisionRef]:
    """Every model's logged decision of ``decision_id`` (by model name)."""
    rows = await conn.fetch(_DECISIONS_OF_ID, decision_id)
    return [
        DecisionRef(r["model_name"], r["model_version"], r["decide_time"], r["checked_at"])
        for r in rows
    ]


async def insert_reward(
    conn: asyncpg.Connection,
    model_name: str,
    decision_id: str,
    definition: str,
    version: int,
    reward: float,
    reward_time: datetime,
    outcome_id: str,
) -> bool:
    """False when the decision already has a reward of this definition (a duplicate)."""
    row = await conn.fetchval(
        _INSERT_REWARD,
        model_name,
        decision_id,
        definition,
        version,
        reward,
        reward_time,
        outcome_id,
    )
    return row is not None


async def insert_refusal(conn: asyncpg.Connection, refused: ev.RewardRefused) -> None:
    await conn.execute(
        _INSERT_REFUSAL,
        refused.outcome_id,
        refused.decision_id,
        refused.reward_definition,
        refused.reward_definition_version,
        refused.reason,
        refused.detail,
    )


async def refusal_counts(pool: asyncpg.Pool, definition: str = "") -> dict[str, int]:
    """Refused outcomes by reason (of one definition, or all)."""
    rows = await pool.fetch(_COUNT_REFUSALS, definition)
    return {row["reason"]: int(row["n"]) for row in rows}


LISTING_HORIZON_S = 2.0
"""How far behind Postgres's clock a listing ends: past the logger's flush delay (0.2 s,
more under load), so every decision made before the end is written when it is read. A
decision held back longer (the logger buffering through a Postgres outage) can be missing
from a listing made while it was held: list again once the logger caught up."""


@dataclass(frozen=True)
class DecisionRow:
    """A logged decision with its reward of the listed definition, if any."""

    decision_id: str
    decide_time: datetime
    payload: bytes
    """The ``PredictionLogged`` event."""
    reward: float | None
    reward_time: datetime | None
    read_at: datetime
    """Postgres's clock when the page was read."""


async def page(
    pool: asyncpg.Pool,
    model_name: str,
    definition: str,
    version: int,
    start: datetime,
    end: datetime,
    after: tuple[datetime, str],
    limit: int,
) -> list[DecisionRow]:
    """Decisions of ``model_name`` made in [start, end) (and ``LISTING_HORIZON_S`` before
    now), ordered by (decide time, decision id), after ``after``."""
    rows = await pool.fetch(
        _PAGE, model_name, definition, version, start, end, *after, limit, LISTING_HORIZON_S
    )
    return [
        DecisionRow(
            r["decision_id"],
            r["decide_time"],
            bytes(r["payload"]),
            r["reward"],
            r["reward_time"],
            r["read_at"],
        )
        for r in rows
    ]
