"""Logged decisions and their rewards (``inference.decisions``, ``.rewards``,
``.reward_refusals``): written with the events they fold, read by ListDecisions.

A decision row is written in the same transaction as its ``PredictionLogged`` event (the
logger's flush); a reward row, or a refusal row, in the same transaction as the
outcome consumer's processed-message record and its ``RewardJoined``/``RewardRefused``
event. ``rewards``' key (decision, definition, version) is what makes a second reward
for the same decision a duplicate, whichever process sees it.

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
    INSERT INTO inference.decisions (decision_id, model_name, model_version, decide_time, payload)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bytea[])
    ON CONFLICT (decision_id) DO NOTHING"""
_DECISION = """
    SELECT model_name, model_version, decide_time, clock_timestamp() AS checked_at
    FROM inference.decisions WHERE decision_id = $1"""
_INSERT_REWARD = """
    INSERT INTO inference.rewards
        (decision_id, definition, definition_version, reward, reward_time, outcome_id)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (decision_id, definition, definition_version) DO NOTHING
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
        ON r.decision_id = d.decision_id AND r.definition = $2 AND r.definition_version = $3
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
    rows = [
        (log, payload)
        for log, payload in zip(logs, payloads, strict=True)
        if log.chosen_action and log.action_probabilities and log.arm != m.ARM_SHADOW
    ]
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


@dataclass(frozen=True)
class DecisionRef:
    """A logged decision, as the reward join needs it."""

    model_name: str
    model_version: int
    decide_time: datetime
    checked_at: datetime
    """Postgres's clock when it was read (the clock statuses are reported with)."""


async def decision(conn: asyncpg.Connection, decision_id: str) -> DecisionRef | None:
    row = await conn.fetchrow(_DECISION, decision_id)
    if row is None:
        return None
    return DecisionRef(
        row["model_name"], row["model_version"], row["decide_time"], row["checked_at"]
    )


async def insert_reward(
    conn: asyncpg.Connection,
    decision_id: str,
    definition: str,
    version: int,
    reward: float,
    reward_time: datetime,
    outcome_id: str,
) -> bool:
    """False when the decision already has a reward of this definition (a duplicate)."""
    row = await conn.fetchval(
        _INSERT_REWARD, decision_id, definition, version, reward, reward_time, outcome_id
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
