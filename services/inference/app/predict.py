"""Predict: route rows to deployments, one feature call, batched scoring, logs.

For a request on model M and alias A (default production):
1. the slot of (M, A) gives the serving version, read once (a swap mid-request cannot
   mix versions); for production, rows whose entity hashes below the canary's share go
   to the canary (``domain.routing``), sticky per entity;
2. one GetOnlineFeatures call fetches every row's features (the models' feature
   service, else their features by name) with the request-time features, inheriting
   the deadline;
3. each arm's rows go to the batcher (``batching.Batcher``), which applies the model's
   preprocessing and runs its runtime together with other requests' rows;
4. sampled decisions are logged (``PredictionLogger``); a shadow version scores the
   sampled rows after the response, off its path, and is only ever logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from uuid6 import uuid7

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fsr
from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m
from libs.errors import InvalidArgument, NotFound, Unavailable
from services.inference.app.model import LoadedModel
from services.inference.app.prediction_log import PredictionLogger
from services.inference.app.serving import CANARY, PRODUCTION, SHADOW, ServingTable, Slot
from services.inference.batching import Batcher
from services.inference.domain.policy import choose
from services.inference.domain.routing import goes_to_canary, sampled
from services.inference.store.features import OnlineFeatures

_log = logging.getLogger(__name__)
_ABSENT = (fs.FEATURE_STATUS_NOT_FOUND, fs.FEATURE_STATUS_EXPIRED)


@dataclass(frozen=True)
class RowInput:
    """One row of a validated request."""

    entity_keys: Mapping[str, fs.Value]
    request_features: Mapping[str, fs.Value]
    decision_id: str
    """"" when the caller gave none (one is generated)."""
    eligible_actions: Sequence[str] = ()


@dataclass(frozen=True)
class PredictCall:
    model_name: str
    alias: str
    rows: Sequence[RowInput]
    join_keys: tuple[str, ...]
    """The entity key names every row carries."""
    request_feature_names: tuple[str, ...]
    deadline: float | None
    """``time.monotonic()`` deadline of the call."""
    trace_id: str
    disable_canary: bool = False
    allow_unknown_entities: bool = False


@dataclass(frozen=True)
class RowResult:
    scores: np.ndarray
    version: int
    arm: int
    decision_id: str
    vector: fs.FeatureVector
    chosen_action: str = ""
    propensity: float = 0.0
    missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class PredictResult:
    rows: list[RowResult]
    output_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    feature_slots: tuple[int, ...]
    """Where each of ``feature_names`` sits in the feature store's vectors."""


@dataclass
class _Arm:
    kind: int
    alias: str
    model: LoadedModel
    share: float
    rows: list[int] = field(default_factory=list)


class Predictor:
    def __init__(
        self,
        table: ServingTable,
        features: OnlineFeatures,
        batcher: Batcher,
        logger: PredictionLogger,
    ) -> None:
        self._table = table
        self._features = features
        self._batcher = batcher
        self._logger = logger
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    async def predict(self, call: PredictCall) -> PredictResult:
        primary_slot = self._slot(call.model_name, call.alias)
        primary = primary_slot.current
        if primary is None:
            raise Unavailable(_not_warm(primary_slot))
        arms = [_Arm(m.ARM_PRIMARY, call.alias, primary, 1.0)]
        canary = self._canary(call)
        if canary is not None:
            arms[0].share = 1.0 - canary.traffic_share
            assert canary.current is not None
            arms.append(_Arm(m.ARM_CANARY, CANARY, canary.current, canary.traffic_share))
        decision_ids = [row.decision_id or str(uuid7()) for row in call.rows]
        for i, row in enumerate(call.rows):
            target = (
                arms[1]
                if len(arms) > 1 and goes_to_canary(call.model_name, row.entity_keys, arms[1].share)
                else arms[0]
            )
            target.rows.append(i)
        rate = self._logger.sample_rate
        logged = [i for i, d in enumerate(decision_ids) if sampled(d, rate)]
        shadow = self._shadow(call) if logged else None
        models = [arm.model for arm in arms] + ([shadow] if shadow else [])
        reply = await self._features.get(
            feature_service=_common_service(models),
            features=_union(models),
            entities={
                key: fs.RepeatedValue(values=[row.entity_keys[key] for row in call.rows])
                for key in call.join_keys
            },
            request_data={
                name: fs.RepeatedValue(
                    values=[row.request_features.get(name, _NULL) for row in call.rows]
                )
                for name in call.request_feature_names
            },
        )
        names = tuple(reply.feature_names)
        used = {n for arm in arms for n in arm.model.feature_names}
        slots = tuple(i for i, n in enumerate(names) if n in used)
        missing = self._missing(call, reply, slots, names)
        results: list[RowResult | None] = [None] * len(call.rows)
        scored = await asyncio.gather(
            *(self._score(arm, reply, names, call.deadline) for arm in arms if arm.rows)
        )
        for arm, scores in zip([a for a in arms if a.rows], scored, strict=True):
            policy = arm.model.policy
            for k, i in enumerate(arm.rows):
                row_scores = scores[k]
                action, propensity = "", 0.0
                if policy is not None:
                    choice = choose(
                        policy, row_scores, call.rows[i].eligible_actions, decision_ids[i]
                    )
                    action, propensity = choice.action, choice.propensity
                results[i] = RowResult(
                    row_scores,
                    arm.model.version,
                    arm.kind,
                    decision_ids[i],
                    reply.results[i],
                    action,
                    propensity,
                    missing[i],
                )
        done = [r for r in results if r is not None]
        now = datetime.now(UTC)
        arm_of = {i: arm for arm in arms for i in arm.rows}
        for i in logged:
            arm = arm_of[i]
            self._logger.offer(
                _log_message(
                    call,
                    call.rows[i],
                    arm.alias,
                    arm.kind,
                    arm.share,
                    arm.model,
                    done[i],
                    names,
                    now,
                    rate,
                )
            )
        if shadow is not None:
            self._shadow_later(call, shadow, logged, decision_ids, names, reply, now, rate)
        return PredictResult(
            done, arms[0].model.output_names, tuple(names[i] for i in slots), slots
        )

    # -- routing ---------------------------------------------------------------------------

    def _slot(self, model_name: str, alias: str) -> Slot:
        slot = self._table.slot(model_name, alias)
        if slot is None or (slot.removed and slot.current is None):
            deployed = self._table.aliases_of(model_name)
            if not deployed:
                raise NotFound(
                    f"no model {model_name!r} is deployed here; ListDeployments shows what is "
                    "(a model serves once its production alias is set in the registry)"
                )
            raise NotFound(
                f"alias {alias!r} of model {model_name!r} is not deployed here; "
                f"deployed: {deployed}"
            )
        return slot

    def _canary(self, call: PredictCall) -> Slot | None:
        if call.alias != PRODUCTION or call.disable_canary:
            return None
        slot = self._table.slot(call.model_name, CANARY)
        if slot is None or slot.current is None or slot.traffic_share <= 0.0:
            return None
        return slot

    def _shadow(self, call: PredictCall) -> LoadedModel | None:
        slot = self._table.slot(call.model_name, SHADOW)
        return slot.current if slot is not None and call.alias == PRODUCTION else None

    # -- features and scoring --------------------------------------------------------------

    def _missing(
        self,
        call: PredictCall,
        reply: fsr.GetOnlineFeaturesResponse,
        slots: tuple[int, ...],
        names: tuple[str, ...],
    ) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        unknown: list[str] = []
        for i, vector in enumerate(reply.results):
            statuses = vector.statuses
            absent = tuple(names[s] for s in slots if statuses[s] in _ABSENT)
            if absent and not call.allow_unknown_entities:
                # Unknown: nothing stored for it at all (every stored feature NOT_FOUND;
                # on-demand values carry no event time and do not count).
                stored = [
                    s
                    for s in slots
                    if statuses[s] != fs.FEATURE_STATUS_PRESENT or vector.event_times[s].seconds
                ]
                if stored and all(statuses[s] == fs.FEATURE_STATUS_NOT_FOUND for s in stored):
                    unknown.append(_entity(call.rows[i].entity_keys))
            out.append(absent)
        if unknown:
            shown = ", ".join(unknown[:5]) + (
                f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            )
            raise NotFound(
                f"the feature store knows nothing of {shown}: check the keys, or set "
                "allow_unknown_entities to score with the training fills"
            )
        return out

    async def _score(
        self,
        arm: _Arm,
        reply: fsr.GetOnlineFeaturesResponse,
        names: tuple[str, ...],
        deadline: float | None,
    ) -> np.ndarray:
        vectors = [reply.results[i] for i in arm.rows]
        rows = arm.model.rows_from_reply(names, vectors)
        return await self._batcher.submit(arm.model, rows, len(vectors), deadline)  # type: ignore[no-any-return]

    # -- logs ------------------------------------------------------------------------------

    def _shadow_later(
        self,
        call: PredictCall,
        shadow: LoadedModel,
        logged: list[int],
        decision_ids: list[str],
        names: tuple[str, ...],
        reply: fsr.GetOnlineFeaturesResponse,
        now: datetime,
        rate: float,
    ) -> None:
        async def score_and_log() -> None:
            try:
                vectors = [reply.results[i] for i in logged]
                rows = shadow.rows_from_reply(names, vectors)
                scores = await self._batcher.submit(shadow.shadow_target, rows, len(vectors), None)
            except Exception as exc:  # a shadow never fails a request; it only logs
                _log.debug("shadow scoring skipped: %s", exc)
                return
            for k, i in enumerate(logged):
                result = RowResult(
                    scores[k], shadow.version, m.ARM_SHADOW, decision_ids[i], reply.results[i]
                )
                self._logger.offer(
                    _log_message(
                        call,
                        call.rows[i],
                        SHADOW,
                        m.ARM_SHADOW,
                        1.0,
                        shadow,
                        result,
                        names,
                        now,
                        rate,
                    )
                )

        task = asyncio.create_task(score_and_log())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)


_NULL = fs.Value()


def _log_message(
    call: PredictCall,
    row: RowInput,
    alias: str,
    arm: int,
    share: float,
    model: LoadedModel,
    result: RowResult,
    names: tuple[str, ...],
    now: datetime,
    rate: float,
) -> ev.PredictionLogged:
    vector = result.vector
    index = {n: i for i, n in enumerate(names)}
    used = [index[n] for n in model.feature_names]
    values = [vector.values[i] for i in used]
    digest = hashlib.sha256()
    for value in values:
        digest.update(value.SerializeToString(deterministic=True))
        digest.update(b"\x1f")
    message = ev.PredictionLogged(
        decision_id=result.decision_id,
        model_name=call.model_name,
        model_version=model.version,
        alias=alias,
        arm=arm,
        arm_share=share,
        sample_rate=rate,
        entity_keys=dict(row.entity_keys),
        request_features=dict(row.request_features),
        feature_names=list(model.feature_names),
        feature_values=values,
        feature_event_times=[vector.event_times[i] for i in used],
        features_sha256=digest.hexdigest(),
        feature_service=model.files.feature_service,
        feature_service_version=model.files.feature_service_version,
        output_names=list(model.output_names),
        scores=[float(s) for s in result.scores],
        eligible_actions=list(row.eligible_actions),
        chosen_action=result.chosen_action,
        propensity=result.propensity,
        trace_id=call.trace_id,
        runtime=model.runtime.info.kind,
    )
    message.predict_time.FromDatetime(now)
    return message


def _common_service(models: Sequence[LoadedModel]) -> str:
    services = {model.files.feature_service for model in models}
    return services.pop() if len(services) == 1 else ""


def _union(models: Sequence[LoadedModel]) -> list[str]:
    return list(dict.fromkeys(n for model in models for n in model.feature_names))


def _entity(keys: Mapping[str, fs.Value]) -> str:
    parts = []
    for name in sorted(keys):
        value = keys[name]
        kind = value.WhichOneof("kind")
        parts.append(f"{name}={getattr(value, kind) if kind else None!r}")
    return "{" + ", ".join(parts) + "}"


def _not_warm(slot: Slot) -> str:
    base = f"{slot.model_name}/{slot.alias} is not warm yet"
    if slot.failure is not None:
        return (
            f"{base}: v{slot.failure.version} was refused at {slot.failure.stage} "
            f"({slot.failure.reason}) and no earlier version serves"
        )
    return f"{base} (v{slot.requested_version} is loading); retry shortly"


def check_rows(call: PredictCall, max_rows: int) -> None:
    if len(call.rows) > max_rows:
        raise InvalidArgument(f"at most {max_rows} rows per request; split it")
