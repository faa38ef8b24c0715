"""The inference service from Python: score rows by entity key, see what serves.

    async with grpc.aio.insecure_channel("127.0.0.1:50054") as channel:
        inference = InferenceClient(InferenceStub(channel))
        result = await inference.predict(
            "credit-default",
            [PredictRow({"loan_id": "LC1"}, {"requested_amount": 12000.0})],
        )
        result.rows[0].scores["probability"], result.rows[0].model_version
        decided = await inference.decide("credit-line", [PredictRow({"loan_id": "LC1"})])
        decided.rows[0].action, decided.rows[0].propensity, decided.rows[0].probabilities
        for deployment in (await inference.list_deployments()).deployments: ...
        await inference.wait_until_serving("credit-default", 7)  # after moving the alias

Deadlines: every call has one (``timeout_s``; the channel's default is none at all),
and a retried Predict shares it — retries never extend it. Retries only where safe:
Predict changes nothing but the sampled prediction log, so it is retried after
UNAVAILABLE (a replica restarting, a version still loading) and RESOURCE_EXHAUSTED (a
full queue), with backoff, within the deadline. Rows without a decision id get one
here, before the first try, so a retry is the same decision (the same canary arm,
the same exploration draw, the same id in the log) rather than a new one. Nothing else
is retried: an INVALID_ARGUMENT or NOT_FOUND will not change, and a DEADLINE_EXCEEDED
has spent the budget.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from lathe.feature_store.v1.message_pb2 import Value
from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from libs.sdk.feature_store import Scalar, to_value
from libs.sdk.retries import RetryPolicy

T = TypeVar("T")

RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
"""Predict failures worth another try (nothing was scored; the service may be able to soon)."""

PREDICT_RETRY = RetryPolicy(attempts=3, first_backoff_s=0.05, max_backoff_s=0.5)
"""Three tries, 50 ms then 100 ms apart: rides out a restart, not an outage."""


@dataclass(frozen=True)
class PredictRow:
    """One row to score."""

    entity_keys: Mapping[str, str | int]
    """The entity's join keys, e.g. ``{"loan_id": "LC1"}``: strings or integers (numpy's
    integers too)."""
    request_features: Mapping[str, Scalar] = field(default_factory=dict)
    """Request-time inputs of on-demand features, e.g. ``{"requested_amount": 12000.0}``
    (``libs.sdk.feature_store.to_value`` types them; numpy scalars are taken, other
    objects refused with TypeError); a None value is left out of the request."""
    decision_id: str = ""
    """Your id of this decision (outcomes join on it); "" lets the client make one."""
    eligible_actions: Sequence[str] = ()
    """For policy models: the actions allowed for this row (empty: all)."""


@dataclass(frozen=True)
class RowPrediction:
    """The answer for one row."""

    scores: dict[str, float]
    """Output name -> score (e.g. ``{"probability": 0.07}``)."""
    model_version: int
    arm: str
    """``primary`` or ``canary``."""
    decision_id: str
    feature_event_times: dict[str, datetime | None]
    """Feature -> when its value was true (None for request-time and missing values)."""
    missing_features: tuple[str, ...]
    """Features the store had no (unexpired) value for: the model saw the training fill."""
    chosen_action: str = ""
    propensity: float = 0.0


@dataclass(frozen=True)
class Predictions:
    rows: list[RowPrediction]
    """One per request row, in order."""
    trace_id: str
    """The request's trace, for ``lathe trace``."""
    features_read_at: datetime | None = None
    """When the features were read: the rows' reference time (a sequence model's event
    ages are taken at it); score offline at this label time to get the same scores."""


@dataclass(frozen=True)
class RowDecision:
    """One row's decision by a policy (``InferenceClient.decide``)."""

    action: str
    propensity: float
    """P(the policy chooses ``action`` | this row): what off-policy evaluation divides by."""
    probabilities: dict[str, float]
    """The whole distribution, by action (0 where ineligible)."""
    model_version: int
    arm: str
    decision_id: str
    """Rewards join on it (publish them on lathe.ingest.outcomes)."""
    logged: bool


@dataclass(frozen=True)
class Decisions:
    rows: list[RowDecision]
    trace_id: str


@dataclass(frozen=True)
class Failure:
    """Why a requested version does not serve."""

    version: int
    stage: str
    """download, verify, load, build, warm or parity."""
    reason: str
    at: datetime | None


@dataclass(frozen=True)
class DeploymentInfo:
    """One alias of one model as the inference service serves it."""

    model_name: str
    alias: str
    state: str
    """``serving``, ``loading``, ``failed`` or ``removed``."""
    requested_version: int
    """What the registry's alias points to."""
    serving_version: int
    """0 while none serves."""
    previous_version: int
    """Kept loaded for instant rollback (0: none)."""
    warm: bool
    traffic_share: float
    runtime: str
    """e.g. ``onnxruntime_cpu``; "" while none serves."""
    precision: str
    threads: int
    selection_reason: str
    """Why this runtime (or why not a preferred one)."""
    engine_key: str
    parity_max_abs_diff: float
    parity_tolerance: float
    load_seconds: float
    activated_at: datetime | None
    feature_service: str
    feature_service_version: str
    feature_names: tuple[str, ...]
    failure: Failure | None


@dataclass(frozen=True)
class Deployments:
    deployments: list[DeploymentInfo]
    ready: bool
    """Every production deployment of the service is warm."""


class InferenceClient:
    """Predict and the deployments, each call with a deadline; Predict retried where safe."""

    def __init__(
        self,
        stub: InferenceStub,
        *,
        timeout_s: float = 2.0,
        retry: RetryPolicy = PREDICT_RETRY,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.stub = stub
        self._timeout_s = timeout_s
        self._retry = retry
        self._metadata = tuple(metadata) or None  # an empty tuple costs ~45 us a call in grpc

    async def predict(
        self,
        model_name: str,
        rows: Sequence[PredictRow],
        *,
        alias: str = "",
        disable_canary: bool = False,
        allow_unknown_entities: bool = False,
        timeout_s: float | None = None,
    ) -> Predictions:
        """Score ``rows`` with the model's ``alias`` (default production) within the
        deadline, retrying after UNAVAILABLE or RESOURCE_EXHAUSTED while time is left."""
        request = rr.PredictRequest(
            model_name=model_name,
            alias=alias,
            rows=[_row(r) for r in rows],
            disable_canary=disable_canary,
            allow_unknown_entities=allow_unknown_entities,
        )
        response: rr.PredictResponse = await self._call(self.stub.Predict, request, timeout_s)
        return _predictions(response)

    async def _call(self, rpc: Any, request: Any, timeout_s: float | None) -> Any:
        """``rpc(request)`` within the deadline, retried where safe (module docstring)."""
        deadline = time.monotonic() + (self._timeout_s if timeout_s is None else timeout_s)

        async def attempt(remaining_s: float) -> Any:
            return await rpc(request, timeout=remaining_s, metadata=self._metadata)

        return await _retrying(self._retry, deadline, attempt)

    async def decide(
        self,
        model_name: str,
        rows: Sequence[PredictRow],
        *,
        alias: str = "",
        disable_canary: bool = False,
        allow_unknown_entities: bool = False,
        timeout_s: float | None = None,
    ) -> Decisions:
        """Decide for ``rows`` with the policy's ``alias`` (default production), retried
        as ``predict`` is: the decision ids are made before the first try, so a retry draws
        the same actions (and logs the same decisions; the first log of an id counts)."""
        request = rr.DecideRequest(
            model_name=model_name,
            alias=alias,
            rows=[_row(r) for r in rows],
            disable_canary=disable_canary,
            allow_unknown_entities=allow_unknown_entities,
        )
        response: rr.DecideResponse = await self._call(self.stub.Decide, request, timeout_s)
        names = list(response.action_names)
        return Decisions(
            [
                RowDecision(
                    action=d.action,
                    propensity=d.propensity,
                    probabilities=dict(zip(names, d.probabilities, strict=True)),
                    model_version=d.model_version,
                    arm=m.Arm.Name(d.arm).removeprefix("ARM_").lower(),
                    decision_id=d.decision_id,
                    logged=d.logged,
                )
                for d in response.decisions
            ],
            response.trace_id,
        )

    async def list_deployments(
        self, model_name: str = "", *, timeout_s: float | None = None
    ) -> Deployments:
        """Every followed alias (of ``model_name`` only, when given)."""
        response = await self.stub.ListDeployments(
            rr.ListDeploymentsRequest(model_name=model_name),
            timeout=self._timeout_s if timeout_s is None else timeout_s,
            metadata=self._metadata,
        )
        return Deployments([_deployment(d) for d in response.deployments], response.ready)

    async def get_deployment(
        self, model_name: str, alias: str = "production", *, timeout_s: float | None = None
    ) -> DeploymentInfo:
        response = await self.stub.GetDeployment(
            rr.GetDeploymentRequest(model_name=model_name, alias=alias),
            timeout=self._timeout_s if timeout_s is None else timeout_s,
            metadata=self._metadata,
        )
        return _deployment(response.deployment)

    async def wait_until_serving(
        self,
        model_name: str,
        version: int,
        *,
        alias: str = "production",
        timeout_s: float = 120.0,
        poll_s: float = 0.1,
        on_progress: Callable[[str], None] | None = None,
    ) -> DeploymentInfo:
        """Until the service serves ``version`` as ``alias`` of ``model_name``, warm, with
        the alias still there (e.g. after moving the alias in the registry). Raises
        ``DeploymentRefused`` as soon as the service refused that version (it will not
        serve it: fix the model or move the alias back), ``TimeoutError`` past
        ``timeout_s`` saying where the deployment stands. Each poll waits at most the
        client's ``timeout_s`` and never past the overall one; a poll that gets no answer
        in time (a busy service) is polled again. ``on_progress`` hears the state each
        time it is read."""
        _check_seconds("timeout_s", timeout_s)
        _check_seconds("poll_s", poll_s)
        deadline = time.monotonic() + timeout_s
        seen = ""  # the deployment as last read
        while True:
            poll_timeout = max(0.0, min(self._timeout_s, deadline - time.monotonic()))
            try:
                deployment = await self.get_deployment(model_name, alias, timeout_s=poll_timeout)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    where = f"no answer within {poll_timeout:.3g}s" + (f"; {seen}" if seen else "")
                elif code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    where = f"not deployed here yet ({code.name}: {error.details()})"
                else:
                    raise
            else:
                if _serves(deployment, version):
                    return deployment
                if _refused(deployment, version):
                    raise DeploymentRefused(deployment)
                where = seen = _where(deployment)
            if on_progress is not None:
                on_progress(where)
            if time.monotonic() + poll_s > deadline:
                raise TimeoutError(
                    f"inference did not serve {model_name} v{version} as {alias} within "
                    f"{timeout_s:g}s: {where}"
                )
            await asyncio.sleep(poll_s)


def _serves(deployment: DeploymentInfo, version: int) -> bool:
    """``version`` serves warm and is still what the alias asks for."""
    return (
        deployment.serving_version == version
        and deployment.requested_version == version
        and deployment.warm
    )


def _refused(deployment: DeploymentInfo, version: int) -> bool:
    """The service refused ``version`` and is not trying it again: the failure is that
    version's and the deployment is FAILED (a reload of it reports LOADING)."""
    failure = deployment.failure
    return deployment.state == "failed" and failure is not None and failure.version == version


def _where(deployment: DeploymentInfo) -> str:
    serving = deployment.serving_version
    return f"{deployment.state}, requested v{deployment.requested_version}, " + (
        f"serving v{serving}" if serving else "nothing serving"
    )


def _check_seconds(name: str, seconds: float) -> None:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {seconds!r}")


class DeploymentRefused(Exception):
    """The inference service refused the version it was asked to serve (download, verify,
    build, warm-up or parity with ONNX Runtime); the previous version, if any, serves."""

    def __init__(self, deployment: DeploymentInfo) -> None:
        failure = deployment.failure
        assert failure is not None
        super().__init__(
            f"inference refused {deployment.model_name} v{failure.version} as "
            f"{deployment.alias} at {failure.stage}: {failure.reason}"
        )
        self.deployment = deployment


async def _retrying(
    policy: RetryPolicy, deadline: float, attempt: Callable[[float], Awaitable[T]]
) -> T:
    """``attempt(seconds left)`` until it succeeds, fails for good, or time or tries run out."""
    backoff = policy.first_backoff_s
    for tries_left in range(policy.attempts - 1, -1, -1):
        remaining = deadline - time.monotonic()
        if policy.attempt_timeout_s is not None:
            remaining = min(remaining, policy.attempt_timeout_s)
        try:
            return await attempt(max(remaining, 0.0))
        except grpc.aio.AioRpcError as error:
            retried = error.code() in RETRIED or (
                error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                and policy.attempt_timeout_s is not None
            )
            if not retried or tries_left == 0 or time.monotonic() + backoff >= deadline:
                raise
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, policy.max_backoff_s)
    raise AssertionError("unreachable: the last try returns or raises")


def _row(row: PredictRow) -> m.PredictionInput:
    return m.PredictionInput(
        entity_keys={k: _key(k, v) for k, v in row.entity_keys.items()},
        # None: left out (the service refuses an empty value and says to leave it out).
        request_features={
            k: _typed(f"request feature {k!r}", v)
            for k, v in row.request_features.items()
            if v is not None
        },
        # Made here, before the first try: a retry is the same decision.
        decision_id=row.decision_id or str(uuid.uuid4()),
        eligible_actions=list(row.eligible_actions),
    )


def _key(name: str, key: object) -> Value:
    if key is None:
        raise TypeError(f"entity key {name!r} is None: every row needs a value for each key")
    return _typed(f"entity key {name!r}", key)


def _typed(what: str, value: object) -> Value:
    """``to_value``, its TypeError or ValueError naming the key or feature."""
    try:
        return to_value(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise type(error)(f"{what}: {error}") from None


def _predictions(response: rr.PredictResponse) -> Predictions:
    outputs, features = list(response.output_names), list(response.feature_names)
    rows = []
    for p in response.predictions:
        rows.append(
            RowPrediction(
                scores=dict(zip(outputs, p.scores, strict=True)),
                model_version=p.model_version,
                arm=m.Arm.Name(p.arm).removeprefix("ARM_").lower(),
                decision_id=p.decision_id,
                feature_event_times={
                    name: _time(t) for name, t in zip(features, p.feature_event_times, strict=True)
                },
                missing_features=tuple(p.missing_features),
                chosen_action=p.chosen_action,
                propensity=p.propensity,
            )
        )
    read_at = (
        response.features_read_at.ToDatetime(tzinfo=UTC)
        if response.HasField("features_read_at")
        else None
    )
    return Predictions(rows, response.trace_id, read_at)


def _deployment(d: m.Deployment) -> DeploymentInfo:
    details = d.runtime_details
    failure = None
    if d.HasField("failure") and d.failure.version:
        failure = Failure(
            d.failure.version, d.failure.stage, d.failure.reason, _time(d.failure.fail_time)
        )
    return DeploymentInfo(
        model_name=d.model_name,
        alias=d.alias,
        state=m.DeploymentState.Name(d.state).removeprefix("DEPLOYMENT_STATE_").lower(),
        requested_version=d.requested_version,
        serving_version=d.serving_version,
        previous_version=d.previous_version,
        warm=d.warm,
        traffic_share=d.traffic_share,
        runtime=(
            m.RuntimeKind.Name(d.runtime).removeprefix("RUNTIME_KIND_").lower() if d.runtime else ""
        ),
        precision=details.precision,
        threads=details.threads,
        selection_reason=details.selection_reason,
        engine_key=details.engine_key,
        parity_max_abs_diff=details.parity_max_abs_diff,
        parity_tolerance=details.parity_tolerance,
        load_seconds=details.load_seconds,
        activated_at=_time(d.activate_time),
        feature_service=d.feature_service,
        feature_service_version=d.feature_service_version,
        feature_names=tuple(d.feature_names),
        failure=failure,
    )


def _time(stamp: object) -> datetime | None:
    seconds, nanos = stamp.seconds, stamp.nanos  # type: ignore[attr-defined]
    if not seconds and not nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined,no-any-return]
