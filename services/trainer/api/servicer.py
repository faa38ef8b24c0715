"""gRPC surface of the trainer: validate, call the application, shape replies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import grpc

from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2, service_pb2_grpc
from lathe.trainer.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument, NotFound
from libs.eventstore import EventMetadata
from libs.grpckit import validation
from libs.grpckit.caller import caller_of
from libs.telemetry import current_traceparent
from services.trainer.api.validate import job_spec
from services.trainer.app.submit import Submitter
from services.trainer.app.supervisor import Supervisor
from services.trainer.domain import job as decide
from services.trainer.domain.job import Job, evolve, to_proto
from services.trainer.events import CATALOG
from services.trainer.store.jobs import JobStore

WATCH_POLL_S = 0.25
_ONEOF = {
    descriptor.message_type.full_name: descriptor.name
    for descriptor in rr.WatchTrainingJobResponse.DESCRIPTOR.oneofs_by_name["event"].fields
}


def _metadata(context: grpc.aio.ServicerContext) -> EventMetadata:
    caller = caller_of(context)
    return EventMetadata(
        correlation_id=caller.request_id, actor=caller.actor, traceparent=current_traceparent()
    )


_LIST_JOBS = "trainer.ListTrainingJobs"


class TrainerServicer(service_pb2_grpc.TrainerServicer):
    def __init__(self, submitter: Submitter, jobs: JobStore, supervisor: Supervisor) -> None:
        self._submitter = submitter
        self._jobs = jobs
        self._supervisor = supervisor

    async def SubmitTrainingJob(
        self, request: rr.SubmitTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> rr.SubmitTrainingJobResponse:
        if not request.HasField("spec"):
            raise InvalidArgument("spec is required: the training job to run")
        job = await self._submitter.submit(
            job_spec(request.spec), _metadata(context), caller_of(context).request_id
        )
        return rr.SubmitTrainingJobResponse(job=to_proto(job))

    async def GetTrainingJob(
        self, request: rr.GetTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetTrainingJobResponse:
        return rr.GetTrainingJobResponse(job=await self._job(request.job_id))

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
        jobs, after = await self._jobs.page(
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
        await self._job(job_id)
        reason = request.reason or f"cancelled by {caller_of(context).actor}"
        job = await self._jobs.record(
            job_id, lambda j: decide.decide_cancel(j, reason), _metadata(context)
        )
        self._supervisor.cancel(job_id)
        return rr.CancelTrainingJobResponse(job=to_proto(job))

    async def WatchTrainingJob(
        self, request: rr.WatchTrainingJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rr.WatchTrainingJobResponse]:
        job_id = validation.require(request.job_id, "job_id")
        if request.after_version < 0:
            raise InvalidArgument("after_version must be >= 0")
        await self._job(job_id)
        job, version = Job(job_id), 0
        while True:
            events = await self._jobs.events_after(job_id, version)
            for event in events:
                message = CATALOG.decode(event.event_type, event.payload)
                job = evolve(job, message, event.recorded_at)
                version = event.stream_version
                if version <= request.after_version:
                    continue
                reply = rr.WatchTrainingJobResponse(
                    stream_version=version,
                    event_id=str(event.event_id),
                    state=job.state,  # type: ignore[arg-type]
                )
                reply.record_time.FromDatetime(event.recorded_at)
                getattr(reply, _ONEOF[message.DESCRIPTOR.full_name]).CopyFrom(message)
                yield reply
            if job.terminal:
                return
            await asyncio.sleep(WATCH_POLL_S)

    async def _job(self, job_id: str) -> message_pb2.TrainingJob:
        job = await self._jobs.get(validation.require(job_id, "job_id"))
        if job is None:
            raise NotFound(f"no training job {job_id!r}; ListTrainingJobs shows them")
        return job


assert ev.JobSubmitted  # the event messages are the oneof's members
