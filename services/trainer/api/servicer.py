"""gRPC surface of the trainer: validate, call the application, shape replies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import grpc

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


class TrainerServicer(service_pb2_grpc.TrainerServicer):
    def __init__(self, submitter: Submitter, canceller: Canceller, queries: JobQueries) -> None:
        self._submitter = submitter
        self._canceller = canceller
        self._queries = queries

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


assert ev.JobSubmitted  # the event messages are the oneof's members
