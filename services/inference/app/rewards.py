"""The outcome consumer: ``lathe.ingest.outcomes`` joined to logged decisions, once.

A durable JetStream consumer (``libs.eventstore.DurableConsumer``, shared by replicas)
reads product systems' outcome objects (``domain.rewards``). For each, in the consumer's
transaction — the same one that records the message as processed, so a redelivered
message changes nothing — it either inserts the reward (keyed by decision, definition
and version: a second reward is a duplicate whatever its message id) and appends
``RewardJoined`` to the stream ``reward-<decision>/<definition>@<version>``, or records
a refusal with its reason and appends ``RewardRefused``. The tables are the counts
(``store.decisions.refusal_counts``): nothing is counted outside the transaction.

Every message ends in one of the two: ``parse_outcome`` bounds every value it lets
through to what the tables and events hold, so no outcome fails the batch and is
redelivered until JetStream drops it. An outcome joins only if it reached JetStream
before its window closed and is handled, by Postgres's clock, within
``JOIN_GRACE_S`` after: the clock ListDecisions reports ``CENSORED`` with, a margin
later, so a decision reported censored is never joined afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime

import asyncpg
from uuid6 import uuid7

from lathe.inference.v1 import events_pb2 as ev
from libs.eventstore import (
    NO_STREAM,
    ConsumerSpec,
    DurableConsumer,
    EventMetadata,
    EventStore,
    RawDelivery,
    raw_decoder,
)
from libs.messaging import EventStreamNames, ensure_stream
from libs.runtime import ServiceContext
from services.inference.domain import rewards as rules
from services.inference.events import CATALOG
from services.inference.store import decisions as store

_log = logging.getLogger(__name__)
CONSUMER = "inference-rewards"
OUTCOMES_SOURCE = "outcomes"
_RETRY_S = (0.2, 1.0, 5.0)


def reward_stream(model_name: str, decision_id: str, definition: str, version: int) -> str:
    """The stream of one decision's reward of one definition: its name is the key that
    makes a second join a duplicate, so its parts are JSON-quoted (an id or a definition
    may hold any separator: "a/b" + "c" and "a" + "b/c" must not meet)."""
    return "reward-" + json.dumps(
        [model_name, decision_id, definition, version], ensure_ascii=False
    )


class RewardJoiner:
    """Joins outcomes to decisions (the consumer's batch handler)."""

    def __init__(
        self,
        store_: EventStore,
        windows: Mapping[tuple[str, int], float],
        default_window_s: float,
    ) -> None:
        self._store = store_
        self._windows = dict(windows)
        self._default_window_s = default_window_s

    def window_s(self, definition: str, version: int) -> float:
        """The censoring window of a reward definition."""
        return self._windows.get((definition, version), self._default_window_s)

    async def handle(self, deliveries: list[RawDelivery], conn: asyncpg.Connection) -> None:
        refused: list[ev.RewardRefused] = []
        for delivery in deliveries:
            outcome_id = str(delivery.event_id)
            try:
                outcome = rules.parse_outcome(delivery.data)
            except rules.MalformedOutcome as exc:
                refused.append(ev.RewardRefused(outcome_id=outcome_id, reason=rules.MALFORMED,
                                                detail=str(exc)))  # fmt: skip
                continue
            reason = await self._join(conn, outcome, outcome_id, delivery.arrival_time)
            if reason is None:
                continue
            refused.append(
                ev.RewardRefused(
                    outcome_id=outcome_id,
                    decision_id=outcome.decision_id,
                    reward_definition=outcome.definition,
                    reward_definition_version=outcome.version,
                    reason=reason[0],
                    detail=reason[1],
                )
            )
        for refusal in refused:
            await store.insert_refusal(conn, refusal)
        if refused:
            events = [
                CATALOG.new_event(r, EventMetadata(actor="inference", correlation_id=r.decision_id))
                for r in refused
            ]
            await self._store.append(
                f"rewards-refused-{uuid7()}", events, expected_version=NO_STREAM, conn=conn
            )

    async def _join(
        self,
        conn: asyncpg.Connection,
        outcome: rules.Outcome,
        outcome_id: str,
        arrived: datetime,
    ) -> tuple[str, str] | None:
        decisions = await store.decisions_of_id(conn, outcome.decision_id)
        if not decisions:
            return rules.UNKNOWN_DECISION, (
                f"no logged decision {outcome.decision_id!r} (never made, not sampled into "
                "the logs, or not yet written)"
            )
        # An outcome names a decision id, not a model: every model's decision of that id
        # (e.g. two policies asked about one application) is judged and joined on its own.
        refusals = [await self._join_one(conn, outcome, outcome_id, arrived, d) for d in decisions]
        joined = [r for r in refusals if r is None]
        return None if joined else refusals[0]

    async def _join_one(
        self,
        conn: asyncpg.Connection,
        outcome: rules.Outcome,
        outcome_id: str,
        arrived: datetime,
        known: store.DecisionRef,
    ) -> tuple[str, str] | None:
        window = self.window_s(outcome.definition, outcome.version)
        late = rules.timing(outcome, known.decide_time, window) or rules.lateness(
            outcome, known.decide_time, window, arrived, known.checked_at
        )
        if late is not None:
            return late
        inserted = await store.insert_reward(
            conn,
            known.model_name,
            outcome.decision_id,
            outcome.definition,
            outcome.version,
            outcome.reward,
            outcome.reward_time,
            outcome_id,
        )
        if not inserted:
            return rules.DUPLICATE, (
                f"{known.model_name}'s decision {outcome.decision_id!r} already has a reward of "
                f"{outcome.definition}@{outcome.version}; the first one stands"
            )
        joined = ev.RewardJoined(
            decision_id=outcome.decision_id,
            model_name=known.model_name,
            model_version=known.model_version,
            reward_definition=outcome.definition,
            reward_definition_version=outcome.version,
            reward=outcome.reward,
            outcome_id=outcome_id,
        )
        joined.reward_time.FromDatetime(outcome.reward_time)
        joined.decide_time.FromDatetime(known.decide_time)
        await self._store.append(
            reward_stream(
                known.model_name, outcome.decision_id, outcome.definition, outcome.version
            ),
            [CATALOG.new_event(joined, EventMetadata(actor="inference",
                                                     correlation_id=outcome.decision_id))],
            expected_version=NO_STREAM,
            conn=conn,
        )  # fmt: skip
        return None


async def run_outcome_consumer(
    context: ServiceContext, joiner: RewardJoiner, stop: asyncio.Event
) -> None:
    """Ensure the ingest stream exists, then consume ``<namespace>.ingest.outcomes``."""
    names = EventStreamNames(context.settings.namespace, "ingest")
    settings = context.settings
    attempt = 0
    while not stop.is_set():
        try:
            await ensure_stream(
                context.js,
                names.stream,
                [names.all_subjects],
                duplicate_window_s=settings.duplicate_window_s,
                replicas=settings.stream_replicas,
            )
            break
        except Exception as exc:  # broker restarting: retry, the host stays up
            delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
            attempt += 1
            _log.warning("ingest stream not ready (%r); retrying in %.1fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    if stop.is_set():
        return
    consumer: DurableConsumer[RawDelivery] = DurableConsumer(
        ConsumerSpec(name=CONSUMER, stream=names.stream,
                     filter_subject=names.subject(OUTCOMES_SOURCE)),
        js=context.js,
        store=context.store,
        batch_handler=joiner.handle,
        decoder=raw_decoder,
    )  # fmt: skip
    await consumer.run(stop)
