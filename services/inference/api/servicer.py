"""``lathe.inference.v1.Inference``: Predict, Decide, ListDecisions, ListDeployments,
GetDeployment.

Errors keep precise codes: the domain's through the kit's interceptor, and the
batcher's own here — a full queue is RESOURCE_EXHAUSTED, a deadline that passes before
the rows are scored is DEADLINE_EXCEEDED (checked first, so an already expired call
costs nothing).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from opentelemetry import trace

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1 import service_pb2_grpc
from libs.errors import InvalidArgument, NotFound
from libs.grpckit import validation
from services.inference.api import validate
from services.inference.app.decision_log import EPOCH, DecisionLog, DecisionQuery
from services.inference.app.predict import Predictor, PredictResult
from services.inference.app.serving import ServingTable, Slot
from services.inference.batching import DeadlinePassed, QueueFull, ShuttingDown
from services.inference.domain import rewards
from services.inference.domain.errors import FeatureDeadline

_PAGE_DEFAULT = 1000
_PAGE_MAX = 10_000


class InferenceServicer(service_pb2_grpc.InferenceServicer):
    def __init__(
        self,
        predictor: Predictor,
        table: ServingTable,
        *,
        max_rows: int,
        decisions: DecisionLog | None = None,
    ) -> None:
        self._predictor = predictor
        self._table = table
        self._max_rows = max_rows
        self._decisions = decisions

    async def Predict(
        self, request: rr.PredictRequest, context: grpc.aio.ServicerContext
    ) -> rr.PredictResponse:
        result, trace_id = await self._run(request, context, decide=False)
        return _response(result, trace_id)

    async def Decide(
        self, request: rr.DecideRequest, context: grpc.aio.ServicerContext
    ) -> rr.DecideResponse:
        result, trace_id = await self._run(request, context, decide=True)
        return _decide_response(result, trace_id)

    async def ListDecisions(
        self, request: rr.ListDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListDecisionsResponse:
        name = validation.resource_name(request.model_name, "model_name")
        definition = request.reward_definition
        problem = rewards.text_problem(definition, rewards.MAX_DEFINITION_BYTES)
        if problem is not None:
            raise InvalidArgument(f"reward_definition {problem}")
        version = request.reward_definition_version
        if version < 1:
            raise InvalidArgument("reward_definition_version must be >= 1 (as in the outcomes)")
        size = request.page_size or _PAGE_DEFAULT
        if not 0 < size <= _PAGE_MAX:
            raise InvalidArgument(f"page_size must be within [1, {_PAGE_MAX}], got {size}")
        start = _time(request, "start_time") or EPOCH
        end = _time(request, "end_time")
        if end is not None and end < start:
            raise InvalidArgument("end_time is before start_time")
        after = _page_token(request.page_token)
        assert self._decisions is not None
        return await self._decisions.page(
            DecisionQuery(name, definition, version, start, end, after, size)
        )

    async def _run(
        self,
        request: rr.PredictRequest | rr.DecideRequest,
        context: grpc.aio.ServicerContext,
        *,
        decide: bool,
    ) -> tuple[PredictResult, str]:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline had passed on arrival"
            )
        span = trace.get_current_span().get_span_context()
        call = validate.predict_call(
            request,
            max_rows=self._max_rows,
            time_remaining_s=remaining,
            trace_id=f"{span.trace_id:032x}" if span.trace_id else "",
            decide=decide,
        )
        try:
            result = await self._predictor.predict(call)
        except QueueFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ShuttingDown as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except (DeadlinePassed, FeatureDeadline) as exc:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the deadline passed before the rows were scored ({exc})",
            )
        return result, call.trace_id

    async def ListDeployments(
        self, request: rr.ListDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListDeploymentsResponse:
        slots = [
            s
            for s in self._table.slots()
            if not request.model_name or s.model_name == request.model_name
        ]
        return rr.ListDeploymentsResponse(
            deployments=[deployment(s) for s in slots], ready=self._table.ready()
        )

    async def GetDeployment(
        self, request: rr.GetDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetDeploymentResponse:
        name = validation.require(request.model_name, "model_name")
        alias = request.alias or validate.DEFAULT_ALIAS
        slot = self._table.slot(name, alias)
        if slot is None:
            raise NotFound(
                f"{name}/{alias} is not deployed here; ListDeployments shows what is followed"
            )
        return rr.GetDeploymentResponse(deployment=deployment(slot))


def _response(result: PredictResult, trace_id: str) -> rr.PredictResponse:
    response = rr.PredictResponse(
        output_names=result.output_names, feature_names=result.feature_names, trace_id=trace_id
    )
    if result.read_at_us:
        response.features_read_at.FromMicroseconds(result.read_at_us)
    slots = result.feature_slots
    add = response.predictions.add
    chosen, propensities = result.chosen_actions, result.propensities
    for i, (scores, vector, missing) in enumerate(
        zip(result.scores, result.vectors, result.missing, strict=True)
    ):
        prediction = add(
            scores=scores,
            model_version=result.versions[i],
            arm=result.arms[i],
            decision_id=result.decision_ids[i],
            missing_features=missing,
        )
        if chosen is not None and propensities is not None:
            prediction.chosen_action, prediction.propensity = chosen[i], propensities[i]
        times = vector.event_times
        prediction.feature_event_times.extend([times[s] for s in slots])
    return response


def _decide_response(result: PredictResult, trace_id: str) -> rr.DecideResponse:
    response = rr.DecideResponse(
        action_names=result.action_names, trace_id=trace_id, log_sample_rate=result.sample_rate
    )
    actions, propensities = result.chosen_actions, result.propensities
    probabilities, scores = result.probabilities, result.action_scores
    assert actions is not None and propensities is not None  # Decide checked every arm
    assert probabilities is not None and scores is not None
    add = response.decisions.add
    logged = result.logged
    for i, decision_id in enumerate(result.decision_ids):
        add(
            decision_id=decision_id,
            action=actions[i],
            propensity=propensities[i],
            probabilities=probabilities[i],
            model_version=result.versions[i],
            arm=result.arms[i],
            scores=scores[i],
            missing_features=result.missing[i],
            logged=i in logged,
        )
    return response


def _time(request: rr.ListDecisionsRequest, field: str) -> datetime | None:
    if not request.HasField(field):
        return None
    stamp = getattr(request, field)
    try:
        return stamp.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field} is not a valid time") from None


def _page_token(token: str) -> tuple[datetime, str]:
    if not token:
        return EPOCH, ""
    micros, sep, decision_id = token.partition(":")
    try:
        # ASCII digits only (str.isdigit accepts others); the id is a decision id.
        ascii_digits = micros.isascii() and micros.isdigit()
        if not sep or not ascii_digits or len(decision_id) > validate.MAX_DECISION_ID:
            raise ValueError
        return EPOCH + timedelta(microseconds=int(micros)), decision_id
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(
            "page_token is not one this service gave; pass next_page_token as returned"
        ) from None


def deployment(slot: Slot) -> m.Deployment:
    current = slot.current
    out = m.Deployment(
        model_name=slot.model_name,
        alias=slot.alias,
        requested_version=slot.requested_version,
        serving_version=current.version if current else 0,
        previous_version=slot.previous.version if slot.previous else 0,
        traffic_share=slot.traffic_share,
        warm=slot.warm,
    )
    if slot.removed:
        out.state = m.DEPLOYMENT_STATE_REMOVED
    elif slot.refused:
        out.state = m.DEPLOYMENT_STATE_FAILED
    elif current is not None and current.version == slot.requested_version:
        out.state = m.DEPLOYMENT_STATE_SERVING
    else:
        out.state = m.DEPLOYMENT_STATE_LOADING
    if slot.failure is not None:
        out.failure.version = slot.failure.version
        out.failure.stage = slot.failure.stage
        out.failure.reason = slot.failure.reason
        if slot.failure.at is not None:
            out.failure.fail_time.FromDatetime(slot.failure.at)
    if current is not None:
        info = current.runtime.info
        out.runtime = info.kind
        out.runtime_details.precision = info.precision
        out.runtime_details.threads = info.threads
        out.runtime_details.engine_key = info.engine_key
        out.runtime_details.selection_reason = info.selection_reason
        out.feature_names.extend(current.feature_names)
        out.feature_service = current.files.feature_service
        out.feature_service_version = current.files.feature_service_version
        if slot.activation is not None:
            out.activate_time.FromDatetime(slot.activation.at)
            out.runtime_details.load_seconds = slot.activation.load_seconds
            if slot.activation.parity is not None:
                out.runtime_details.parity_max_abs_diff = slot.activation.parity.max_abs_diff
                out.runtime_details.parity_tolerance = slot.activation.parity.tolerance
    return out
