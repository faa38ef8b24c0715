"""gRPC surface of the trainer: validate, call the application, shape replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import grpc

from lathe.inference.v1 import request_response_pb2 as irr
from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2, service_pb2_grpc
from lathe.trainer.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument
from libs.eventstore import ClientRequest, EventMetadata
from libs.grpckit import validation
from libs.grpckit.caller import caller_of
from libs.telemetry import current_traceparent
from services.trainer.api.validate import job_spec
from services.trainer.app.cancel import Canceller
from services.trainer.app.queries import JobQueries
from services.trainer.app.submit import Submitter
from services.trainer.policies.jobs import PolicyJobs

_ONEOF = {
    descriptor.message_type.full_name: descriptor.name
    for descriptor in rr.WatchTrainingJobResponse.DESCRIPTOR.oneofs_by_name["event"].fields
}


def _metadata(
    context: grpc.aio.ServicerContext, request: ClientRequest | None = None
) -> EventMetadata:
    """Who and why, for the events a call records; a client request id is their cause."""
    caller = caller_of(context)
    return EventMetadata(
        correlation_id=caller.request_id,
        causation_id=request.request_id if request is not None else "",
        actor=caller.actor,
        traceparent=current_traceparent(),
    )


_LIST_JOBS = "trainer.ListTrainingJobs"
_MIN_S, _MAX_S = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31


class TrainerServicer(service_pb2_grpc.TrainerServicer):
    def __init__(
        self,
        submitter: Submitter,
        canceller: Canceller,
        queries: JobQueries,
        policies: PolicyJobs | None = None,
    ) -> None:
        self._submitter = submitter
        self._canceller = canceller
        self._queries = queries
        self._policies = policies

    async def EvaluatePolicy(
        self, request: rr.EvaluatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> rr.EvaluatePolicyResponse:
        name = validation.resource_name(request.model_name, "model_name")
        if request.version < 0:
            raise InvalidArgument("version must be >= 0 (0: the latest)")
        window = _window(name, request.logs if request.HasField("logs") else None)
        assert self._policies is not None
        version, evaluation = await self._policies.evaluate(name, request.version, window)
        return rr.EvaluatePolicyResponse(version=version, evaluation=evaluation)

    async def LearnPolicy(
        self, request: rr.LearnPolicyRequest, context: grpc.aio.ServicerContext
    ) -> rr.LearnPolicyResponse:
        name = validation.resource_name(request.model_name, "model_name")
        window = _window(name, request.logs if request.HasField("logs") else None)
        holdout = request.holdout or 0.3
        if not 0.05 <= holdout <= 0.9:
            raise InvalidArgument(
                f"holdout must be within [0.05, 0.9] (default 0.3), got {holdout}"
            )
        ClientRequest.of("LearnPolicy", request)  # a malformed id is INVALID_ARGUMENT
        assert self._policies is not None
        version, evaluation = await self._policies.learn(
            name,
            window,
            policy_json=request.policy_json,
            holdout=holdout,
            seed=request.seed,
            request_id=request.request_id,
            description=request.description,
        )
        return rr.LearnPolicyResponse(version=version, evaluation=evaluation)

    async def SubmitTrainingJob(
        self, request: rr.SubmitTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> rr.SubmitTrainingJobResponse:
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required: the training job to run")
        spec = job_spec(request.spec)
        key = ClientRequest.of("SubmitTrainingJob", request)
        job = await self._submitter.submit(spec, _metadata(context, key), key)
        return rr.SubmitTrainingJobResponse(job=job)

    async def GetTrainingJob(
        self, request: rr.GetTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetTrainingJobResponse:
        job_id = validation.require(request.job_id, "job_id")
        return rr.GetTrainingJobResponse(job=await self._queries.job(job_id))

    async def ListTrainingJobs(
        self, request: rr.ListTrainingJobsRequest, context: grpc.aio.ServicerContext
    ) -> rr.ListTrainingJobsResponse:
        if request.model_name:
            validation.resource_name(request.model_name, "model_name")
        if request.state not in message_pb2.JobState.values():
            raise InvalidArgument(f"state {request.state} is not a JobState")
        cursor = validation.decode_page_token(
            request.page_token, kind=_LIST_JOBS, fields={"at": str, "id": str}
        )
        before = None
        if cursor:
            try:
                before = (datetime.fromisoformat(str(cursor["at"])), str(cursor["id"]))
            except (KeyError, ValueError):
                raise InvalidArgument("page_token is not a token this service issued") from None
        jobs, after = await self._queries.page(
            model_name=request.model_name,
            state=request.state,
            before=before,
            limit=validation.page_size(request.page_size),
        )
        token = (
            validation.encode_page_token(
                {"at": after[0].isoformat(), "id": after[1]}, kind=_LIST_JOBS
            )
            if after
            else ""
        )
        return rr.ListTrainingJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelTrainingJob(
        self, request: rr.CancelTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> rr.CancelTrainingJobResponse:
        job_id = validation.require(request.job_id, "job_id")
        key = ClientRequest.of("CancelTrainingJob", request)
        reason = request.reason or f"cancelled by {caller_of(context).actor}"
        job = await self._canceller.cancel(job_id, reason, _metadata(context, key), key)
        return rr.CancelTrainingJobResponse(job=job)

    async def WatchTrainingJob(
        self, request: rr.WatchTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rr.WatchTrainingJobResponse]:
        job_id = validation.require(request.job_id, "job_id")
        if request.after_version < 0:
            raise InvalidArgument("after_version must be >= 0")
        async for change in self._queries.follow(job_id, after_version=request.after_version):
            reply = rr.WatchTrainingJobResponse(
                stream_version=change.stream_version,
                event_id=change.event_id,
                state=change.state,  # type: ignore[arg-type]
            )
            reply.record_time.FromDatetime(change.recorded_at)
            getattr(reply, _ONEOF[change.event.DESCRIPTOR.full_name]).CopyFrom(change.event)
            yield reply


def _window(
    model_name: str, logs: message_pb2.DecisionLogWindow | None
) -> irr.ListDecisionsRequest:
    """The ListDecisions request for a job's window of logs."""
    if logs is None or not logs.reward_definition:
        raise InvalidArgument(
            "logs.reward_definition is required: the reward (as in lathe.ingest.outcomes) "
            "joined to the decisions"
        )
    if logs.reward_definition_version < 1:
        raise InvalidArgument("logs.reward_definition_version must be >= 1")
    request = irr.ListDecisionsRequest(
        model_name=model_name,
        reward_definition=logs.reward_definition,
        reward_definition_version=logs.reward_definition_version,
    )
    for field in ("start_time", "end_time"):
        if logs.HasField(field):
            stamp = getattr(logs, field)
            valid = 0 <= stamp.nanos < 1_000_000_000 and _MIN_S <= stamp.seconds <= _MAX_S
            if not valid:
                raise InvalidArgument(f"logs.{field} is not a valid time")
            getattr(request, field).CopyFrom(stamp)
    both = request.HasField("start_time") and request.HasField("end_time")
    start, end = request.start_time, request.end_time
    if both and (end.seconds, end.nanos) < (start.seconds, start.nanos):
        raise InvalidArgument("logs.end_time is before logs.start_time")
    return request


assert ev.JobSubmitted  # the event messages are the oneof's members
