"""Predict: route rows to deployments, one feature call, batched scoring, logs.

For a request on model M and alias A (default production):
1. the slot of (M, A) gives the serving version, read once (a swap mid-request cannot
   mix versions); for production, rows whose entity hashes below the canary's share go
   to the canary (``domain.routing``), sticky per entity;
2. one GetOnlineFeatures call fetches every row's features (the models' feature
   service, else their features by name) with the request-time features, inheriting
   the deadline — shared with concurrent requests when calls are already out
   (``store.features``);
3. each arm's rows go to the batcher (``batching.Batcher``), which applies the model's
   preprocessing and runs its runtime together with other requests' rows;
4. sampled decisions are logged (``PredictionLogger``); a shadow version scores the
   sampled rows after the response, off its path, and is only ever logged. Its features
   never join the request's call (a shadow reading a feature the store no longer serves
   must not fail production): it reuses the reply when that holds all it reads, else
   fetches its own after the response.

A request is carried by column (one list per entity key, request feature and per-row
attribute), not as one object per row: per-row Python objects were most of a 256-row
request's time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import events_pb2 as ev
from lathe.inference.v1 import message_pb2 as m
from libs.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from libs.telemetry import current_traceparent
from services.inference.app.model import LoadedModel
from services.inference.app.prediction_log import PredictionLogger
from services.inference.app.serving import CANARY, PRODUCTION, SHADOW, ServingTable, Slot
from services.inference.batching import Batcher, DeadlinePassed, QueueFull, ShuttingDown
from services.inference.domain.decision_ids import new_decision_ids
from services.inference.domain.errors import FeatureDeadline
from services.inference.domain.policies import PolicyRefused, decide
from services.inference.domain.routing import goes_to_canary, sampled_rows
from services.inference.store.features import FeatureQuery, FeatureRows, OnlineFeatures

_log = logging.getLogger(__name__)
_ABSENT = frozenset((fs.FEATURE_STATUS_NOT_FOUND, fs.FEATURE_STATUS_EXPIRED))
_SHED = (QueueFull, DeadlinePassed, ShuttingDown, FeatureDeadline)
"""What shadow work gets when it is shed (a busy service, a stop), not a fault of its own."""
SHADOW_BUDGET_S = 5.0
"""How long a shadow's feature call and its rows' wait behind serving traffic may take;
past it the shadow's rows are dropped (a shadow under load is sampled, never queued
without bound)."""


@dataclass(frozen=True)
class PredictCall:
    """A validated Predict request, by column."""

    model_name: str
    alias: str
    rows: int
    join_keys: tuple[str, ...]
    """The entity key names every row carries."""
    entity_keys: Mapping[str, Sequence[fs.Value]]
    """Join key -> its value in each row."""
    request_features: Mapping[str, Sequence[fs.Value]]
    """Request-time feature -> its value in each row (an empty ``Value`` where a row has
    none)."""
    decision_ids: Sequence[str]
    """The caller's decision id of each row; "" where it gave none (one is generated)."""
    eligible_actions: Sequence[Sequence[str]]
    """Per row, for policies (empty: every action the model knows)."""
    deadline: float | None
    """``time.monotonic()`` deadline of the call."""
    trace_id: str
    disable_canary: bool = False
    allow_unknown_entities: bool = False
    decide: bool = False
    """Decide: every arm must be a policy; logged at the decision sample rate."""

    def entity(self, row: int) -> dict[str, fs.Value]:
        """Row ``row``'s entity keys."""
        return {name: values[row] for name, values in self.entity_keys.items()}

    def request_features_of(self, row: int) -> dict[str, fs.Value]:
        """Row ``row``'s request-time features (those it gave)."""
        return {
            name: values[row]
            for name, values in self.request_features.items()
            if values[row].WhichOneof("kind") is not None
        }


@dataclass(frozen=True)
class PredictResult:
    """Per-row outcomes of a call, by column (row ``i`` is index ``i`` of each)."""

    scores: list[list[float]]
    """Each row's outputs, flattened in ``output_names`` order."""
    versions: list[int]
    arms: list[int]
    decision_ids: list[str]
    vectors: Sequence[fs.FeatureVector]
    """The feature store's vector of each row."""
    missing: list[tuple[str, ...]]
    chosen_actions: list[str] | None
    """For policies, per row (None: no arm is a policy)."""
    propensities: list[float] | None
    probabilities: list[list[float]] | None
    """For policies, per row: the whole distribution (``action_names`` order)."""
    action_scores: list[list[float]] | None
    action_names: tuple[str, ...]
    output_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    feature_slots: tuple[int, ...]
    """Where each of ``feature_names`` sits in the feature store's vectors."""
    names: tuple[str, ...]
    """Every feature in the vectors, in their order."""
    sample_rate: float
    """The share of decisions logged when this call was served."""
    logged: frozenset[int] = frozenset()
    read_at_us: int = 0
    """When the features were read (epoch microseconds): the rows' reference time."""
    """The rows whose decision is logged."""

    @property
    def rows(self) -> int:
        return len(self.scores)


@dataclass
class _Arm:
    kind: int
    alias: str
    model: LoadedModel
    share: float
    rows: Sequence[int] = field(default_factory=list)
    """The call's rows this arm scores (a ``range`` of all of them when it is the only one)."""
    incoming: bool = False
    """Counted in ``Predictor.incoming`` (until its rows reach the batcher)."""


class Predictor:
    def __init__(
        self,
        table: ServingTable,
        features: OnlineFeatures,
        batcher: Batcher,
        logger: PredictionLogger,
        *,
        decision_sample_rate: float = 1.0,
    ) -> None:
        self._decision_rate = decision_sample_rate
        self._table = table
        self._features = features
        self._batcher = batcher
        self._logger = logger
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._shadows_failing: set[tuple[str, int]] = set()
        self._incoming: dict[LoadedModel, int] = {}

    def incoming(self, model: LoadedModel) -> int:
        """Requests routed to ``model`` whose rows have not reached the batcher yet (they
        are fetching their features): what an executor could wait for."""
        return self._incoming.get(model, 0)

    async def predict(self, call: PredictCall) -> PredictResult:
        primary_slot = self._slot(call.model_name, call.alias)
        primary = primary_slot.current
        if primary is None:
            raise Unavailable(_not_warm(primary_slot))
        arms = self._arms(call, primary)
        if call.decide:
            _check_policies(call, arms)
        for arm in arms:
            if arm.rows:
                arm.incoming = True
                self._incoming[arm.model] = self._incoming.get(arm.model, 0) + 1
        try:
            return await self._predict(call, arms)
        finally:
            for arm in arms:
                if arm.incoming:
                    self._arrived(arm)

    def _arrived(self, arm: _Arm) -> None:
        arm.incoming = False
        left = self._incoming[arm.model] - 1
        if left:
            self._incoming[arm.model] = left
        else:
            del self._incoming[arm.model]

    async def _predict(self, call: PredictCall, arms: list[_Arm]) -> PredictResult:
        n = call.rows
        decision_ids = list(call.decision_ids)
        if not all(decision_ids):
            fresh = iter(new_decision_ids(decision_ids.count("")))
            decision_ids = [d or next(fresh) for d in decision_ids]
        rate = self._decision_rate if call.decide else self._logger.sample_rate
        logged = sampled_rows(decision_ids, rate)
        shadow = self._shadow(call) if logged else None
        models = [arm.model for arm in arms]
        features = await self._features.get(
            FeatureQuery(
                feature_service=_common_service(models),
                features=_union(models),
                entities=call.entity_keys,
                request_data=call.request_features,
                rows=n,
                deadline=call.deadline,
            )
        )
        names, vectors = features.names, features.vectors
        used = {name for arm in arms for name in arm.model.feature_names}
        slots = tuple(i for i, name in enumerate(names) if name in used)
        missing = self._missing(call, vectors, slots, names)
        live = [arm for arm in arms if arm.rows]
        if len(live) == 1:
            scored = [await self._score(live[0], features, call.deadline)]
        else:
            scored = await asyncio.gather(
                *(self._score(arm, features, call.deadline) for arm in live)
            )
        if len(live) == 1:
            arm = live[0]
            scores = scored[0].tolist()
            versions, kinds = [arm.model.version] * n, [arm.kind] * n
        else:
            scores, versions, kinds = [[]] * n, [0] * n, [0] * n
            for arm, arm_scores in zip(live, scored, strict=True):
                for i, row_scores in zip(arm.rows, arm_scores.tolist(), strict=True):
                    scores[i], versions[i], kinds[i] = row_scores, arm.model.version, arm.kind
        chosen, propensities, probabilities, action_scores = self._choices(
            call, live, scores, decision_ids
        )
        policy = arms[0].model.policy
        result = PredictResult(
            scores,
            versions,
            kinds,
            decision_ids,
            vectors,
            missing,
            chosen,
            propensities,
            probabilities,
            action_scores,
            policy.actions if policy is not None else (),
            arms[0].model.output_names,
            tuple(names[i] for i in slots),
            slots,
            names,
            rate,
            frozenset(logged),
            features.read_at_us,
        )
        if logged:
            now = datetime.now(UTC)
            arm_of = {i: arm for arm in live for i in arm.rows}
            traceparent = current_traceparent()
            # Built at the flush, off the response's path; until then they hold the request.
            builders = [
                partial(
                    _log_message, call, i, (arm_of[i].alias, arm_of[i].kind, arm_of[i].share),
                    arm_of[i].model, result, now,
                )
                for i in logged
            ]  # fmt: skip
            if not self._logger.offer_request(builders, traceparent, request_rows=n):
                # The buffer is full (Postgres slow or away): these logs are dropped, and
                # the caller must not publish outcomes for them as if they were logged.
                result = replace(result, logged=frozenset())
            if shadow is not None:
                self._shadow_later(call, shadow, logged, result, features, now)
        return result

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

    def _arms(self, call: PredictCall, primary: LoadedModel) -> list[_Arm]:
        canary = self._canary(call)
        if canary is None:
            return [_Arm(m.ARM_PRIMARY, call.alias, primary, 1.0, range(call.rows))]
        assert canary.current is not None
        share = canary.traffic_share
        primary_rows: list[int] = []
        canary_rows: list[int] = []
        for i in range(call.rows):
            to_canary = goes_to_canary(call.model_name, call.entity(i), share)
            (canary_rows if to_canary else primary_rows).append(i)
        return [
            _Arm(m.ARM_PRIMARY, call.alias, primary, 1.0 - share, primary_rows),
            _Arm(m.ARM_CANARY, CANARY, canary.current, share, canary_rows),
        ]

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
        vectors: Sequence[fs.FeatureVector],
        slots: tuple[int, ...],
        names: tuple[str, ...],
    ) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        unknown: list[str] = []
        present = fs.FEATURE_STATUS_PRESENT
        every = [present] * len(names)  # compared in C: half the cost of isdisjoint
        for i, vector in enumerate(vectors):
            statuses = vector.statuses
            if statuses == every or _ABSENT.isdisjoint(statuses):
                out.append(())
                continue
            absent = tuple(names[s] for s in slots if statuses[s] in _ABSENT)
            if absent and not call.allow_unknown_entities:
                # Unknown: nothing stored for it at all (every stored feature NOT_FOUND;
                # on-demand values carry no event time and do not count).
                stored = [
                    s for s in slots if statuses[s] != present or vector.event_times[s].seconds
                ]
                if stored and all(statuses[s] == fs.FEATURE_STATUS_NOT_FOUND for s in stored):
                    unknown.append(_entity(call.entity(i)))
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

    async def _score(self, arm: _Arm, features: FeatureRows, deadline: float | None):  # type: ignore[no-untyped-def]
        """float64 [arm's rows, outputs]."""
        vectors = features.vectors
        if not isinstance(arm.rows, range):
            vectors = [vectors[i] for i in arm.rows]
        rows = arm.model.rows_from_reply(features.names, vectors, features.read_at_us)
        self._arrived(arm)
        return await self._batcher.submit(arm.model, rows, len(vectors), deadline)

    def _choices(
        self,
        call: PredictCall,
        arms: Sequence[_Arm],
        scores: list[list[float]],
        decision_ids: list[str],
    ) -> tuple[
        list[str] | None, list[float] | None, list[list[float]] | None, list[list[float]] | None
    ]:
        if all(arm.model.policy is None for arm in arms):
            return None, None, None, None
        n = call.rows
        actions, propensities = [""] * n, [0.0] * n
        probabilities: list[list[float]] = [[]] * n
        action_scores: list[list[float]] = [[]] * n
        for arm in arms:
            policy = arm.model.policy
            if policy is None:
                continue
            rows = arm.rows
            whole = isinstance(rows, range) and len(rows) == n
            try:
                made = decide(
                    policy,
                    scores if whole else [scores[i] for i in rows],
                    call.eligible_actions if whole else [call.eligible_actions[i] for i in rows],
                    decision_ids if whole else [decision_ids[i] for i in rows],
                )
            except PolicyRefused as exc:
                message = f"{call.model_name} v{arm.model.version}: {exc}"
                if "unknown action" in str(exc) or "no eligible action" in str(exc):
                    raise InvalidArgument(message) from None
                raise FailedPrecondition(message) from None
            if whole:
                return made.actions, made.propensities, made.probabilities, made.scores
            for k, i in enumerate(rows):
                actions[i], propensities[i] = made.actions[k], made.propensities[k]
                probabilities[i], action_scores[i] = made.probabilities[k], made.scores[k]
        return actions, propensities, probabilities, action_scores

    # -- logs ------------------------------------------------------------------------------

    def _shadow_later(
        self,
        call: PredictCall,
        shadow: LoadedModel,
        logged: list[int],
        served: PredictResult,
        features: FeatureRows,
        now: datetime,
    ) -> None:
        traceparent = current_traceparent()

        async def score_and_log() -> None:
            deadline = time.monotonic() + SHADOW_BUDGET_S
            try:
                own = await self._shadow_features(call, shadow, logged, features, deadline)
                rows = shadow.rows_from_reply(own.names, own.vectors, own.read_at_us)
                scores = await self._batcher.submit(
                    shadow.shadow_target, rows, len(logged), deadline
                )
            except _SHED as exc:  # busy or stopping: shadow work is the first to go
                _log.debug("shadow %s v%d skipped: %s", call.model_name, shadow.version, exc)
                return
            except Exception as exc:  # a shadow never fails a request; it only logs
                self._shadow_failed(shadow, exc)
                return
            arm = (SHADOW, m.ARM_SHADOW, 1.0)
            for k, i in enumerate(logged):
                message = _log_message(
                    call, i, arm, shadow, served, now, scores=scores[k].tolist(), features=own, at=k
                )
                self._logger.offer(message, traceparent)

        task = asyncio.create_task(score_and_log())
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    def _shadow_failed(self, shadow: LoadedModel, error: Exception) -> None:
        """Say once per shadow version why it scores nothing (then quietly: a shadow that
        cannot read its features fails the same way for every sampled request). Work shed
        under load or at a stop is not a failure (``_SHED``)."""
        version = (shadow.files.model_name, shadow.version)
        if version in self._shadows_failing:
            _log.debug("shadow %s v%d skipped: %s", *version, error)
            return
        self._shadows_failing.add(version)
        _log.warning("shadow %s v%d scores nothing: %s", *version, error)

    async def _shadow_features(
        self,
        call: PredictCall,
        shadow: LoadedModel,
        logged: list[int],
        served: FeatureRows,
        deadline: float,
    ) -> FeatureRows:
        """The shadow's features of the ``logged`` rows: from the request's reply when it
        holds every one the shadow reads, else from a call of its own."""
        if set(shadow.feature_names) <= set(served.names):
            vectors = [served.vectors[i] for i in logged]
            return FeatureRows(served.names, vectors, served.read_at_us)
        return await self._features.get(
            FeatureQuery(
                feature_service=shadow.files.feature_service,
                features=shadow.feature_names,
                entities={k: [v[i] for i in logged] for k, v in call.entity_keys.items()},
                request_data={k: [v[i] for i in logged] for k, v in call.request_features.items()},
                rows=len(logged),
                deadline=deadline,
            )
        )


def _log_message(
    call: PredictCall,
    i: int,
    arm: tuple[str, int, float],
    model: LoadedModel,
    result: PredictResult,
    now: datetime,
    *,
    scores: list[float] | None = None,
    features: FeatureRows | None = None,
    at: int = 0,
) -> ev.PredictionLogged:
    """Row ``i``'s log as scored by ``model`` on ``arm`` (alias, kind, share); a shadow
    passes its own ``scores`` (it chooses no action) and the features it read (row ``at``
    of ``features``)."""
    alias, kind, share = arm
    names = result.names if features is None else features.names
    vector = result.vectors[i] if features is None else features.vectors[at]
    read_at_us = result.read_at_us if features is None else features.read_at_us
    index = {n: k for k, n in enumerate(names)}
    used = [index[n] for n in model.feature_names]
    values = [vector.values[k] for k in used]
    digest = hashlib.sha256()
    for value in values:
        digest.update(value.SerializeToString(deterministic=True))
        digest.update(b"\x1f")
    served = scores is None
    message = ev.PredictionLogged(
        decision_id=result.decision_ids[i],
        model_name=call.model_name,
        model_version=model.version,
        alias=alias,
        arm=kind,
        arm_share=share,
        sample_rate=result.sample_rate,
        entity_keys=call.entity(i),
        request_features=call.request_features_of(i),
        feature_names=list(model.feature_names),
        feature_values=values,
        feature_event_times=[vector.event_times[k] for k in used],
        features_sha256=digest.hexdigest(),
        feature_service=model.files.feature_service,
        feature_service_version=model.files.feature_service_version,
        output_names=list(model.output_names),
        scores=result.scores[i] if scores is None else scores,
        eligible_actions=list(call.eligible_actions[i]),
        chosen_action=result.chosen_actions[i] if served and result.chosen_actions else "",
        propensity=result.propensities[i] if served and result.propensities else 0.0,
        trace_id=call.trace_id,
        runtime=model.runtime.info.kind,
    )
    policy = model.policy
    if served and policy is not None and result.probabilities is not None:
        message.action_names.extend(policy.actions)
        message.action_probabilities.extend(result.probabilities[i])
        message.policy_name = policy.spec.name
        message.policy_spec_sha256 = policy.spec_sha256
        message.policy_salt = policy.spec.salt
        message.exploration_json = policy.exploration_json
    message.predict_time.FromDatetime(now)
    if read_at_us:
        message.features_read_at.FromMicroseconds(read_at_us)
    return message


def _check_policies(call: PredictCall, arms: Sequence[_Arm]) -> None:
    """Decide needs a policy on every arm, all with the same actions."""
    names = None
    for arm in arms:
        policy = arm.model.policy
        if policy is None:
            raise FailedPrecondition(
                f"{call.model_name} v{arm.model.version} ({arm.alias}) is not a policy: register "
                "a version with policy.json (docs/decisioning.md), or call Predict"
            )
        if names is not None and policy.actions != names:
            raise FailedPrecondition(
                f"{call.model_name}: the {arm.alias} version has actions {list(policy.actions)} "
                f"but production has {list(names)}; a canary of a policy needs the same actions"
            )
        names = policy.actions


def _common_service(models: Sequence[LoadedModel]) -> str:
    services = {model.files.feature_service for model in models}
    return services.pop() if len(services) == 1 else ""


def _union(models: Sequence[LoadedModel]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for model in models for n in model.feature_names))


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
