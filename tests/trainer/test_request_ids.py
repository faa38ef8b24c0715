"""Client request ids on the trainer: a submit or cancel retried after a lost reply applies once.

The ambiguity is real: a proxy between client and trainer loses the reply after the
trainer committed (the client sees UNAVAILABLE), then the client retries. Every mutating
RPC is covered, from one table (docs/adr/0015-client-request-ids.md). The trainer here
queues jobs but runs none, so a job's stream holds exactly what the RPCs recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.message import Message

from lathe.trainer.v1 import message_pb2, service_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.config import LatheSettings, ServiceName
from libs.grpckit import mutating_methods
from libs.runtime import ServiceComponents, ServiceContext, ServiceHost
from libs.sdk.retries import RetryPolicy
from libs.sdk.trainer import TrainerClient
from services.trainer.app.supervisor import Supervisor
from services.trainer.service import SPEC
from tests.support.cli import run_lathe
from tests.support.hosting import hosted
from tests.support.reply_dropping_link import ReplyDroppingLink, reply_dropping_link
from tests.trainer.helpers import Dataset, spec

Call = Callable[[TrainerStub, Dataset, str, str, int], Awaitable[Message]]


def _queue_only(context: ServiceContext) -> ServiceComponents:
    """The trainer without its supervisor: jobs are queued and stay queued."""
    components = SPEC.build(context)
    background = [
        task
        for task in components.background
        if not isinstance(getattr(task, "__self__", None), Supervisor)
    ]
    assert len(background) == len(components.background) - 1
    return dataclasses.replace(components, background=background)


@pytest_asyncio.fixture(loop_scope="session")
async def queue_only_trainer(
    test_settings: LatheSettings, feature_store_host: ServiceHost, registry_host: ServiceHost
) -> AsyncIterator[TrainerStub]:
    async with (
        hosted(dataclasses.replace(SPEC, build=_queue_only), test_settings),
        grpc.aio.insecure_channel(test_settings.service_addr(ServiceName.TRAINER)) as channel,
    ):
        yield TrainerStub(channel)


@pytest_asyncio.fixture(loop_scope="session")
async def link(
    queue_only_trainer: TrainerStub, test_settings: LatheSettings
) -> AsyncIterator[ReplyDroppingLink]:
    async with reply_dropping_link(test_settings.service_addr(ServiceName.TRAINER)) as link:
        yield link


@pytest_asyncio.fixture(loop_scope="session")
async def lossy(link: ReplyDroppingLink) -> AsyncIterator[TrainerStub]:
    """A trainer stub whose calls pass through ``link``."""
    async with grpc.aio.insecure_channel(link.address) as channel:
        yield TrainerStub(channel)


@pytest_asyncio.fixture(loop_scope="session")
async def model_jobs(
    queue_only_trainer: TrainerStub, dataset: Dataset, db_pool: asyncpg.Pool
) -> AsyncIterator[Dataset]:
    """``dataset``, whose jobs are all cancelled afterwards (no other trainer may run them)."""
    yield dataset
    for job_id in await db_pool.fetch(
        "SELECT job_id FROM trainer.jobs WHERE model_name = $1", dataset.model_name
    ):
        await queue_only_trainer.CancelTrainingJob(
            rr.CancelTrainingJobRequest(job_id=job_id["job_id"])
        )


@dataclass(frozen=True)
class _Mutation:
    """One mutating RPC: how to set the scene, call it, and what it must answer."""

    rpc: str
    prepare: Callable[[TrainerStub, Dataset], Awaitable[str]]
    """Creates what the call needs; returns the job id it acts on ("" for none)."""
    call: Call
    """(stub, dataset, job id, request id, variant): variant 1 asks for something else."""
    check: Callable[[Message], None]
    """What the reply must say, whichever attempt it answers."""


async def _nothing(stub: TrainerStub, dataset: Dataset) -> str:
    return ""


async def _queued_job(stub: TrainerStub, dataset: Dataset) -> str:
    reply = await stub.SubmitTrainingJob(rr.SubmitTrainingJobRequest(spec=spec(dataset)))
    return reply.job.job_id


def _submit(
    stub: TrainerStub, dataset: Dataset, job_id: str, rid: str, variant: int
) -> Awaitable[Message]:
    return stub.SubmitTrainingJob(
        rr.SubmitTrainingJobRequest(spec=spec(dataset, seed=7 + variant), request_id=rid)
    )


def _cancel(
    stub: TrainerStub, dataset: Dataset, job_id: str, rid: str, variant: int
) -> Awaitable[Message]:
    return stub.CancelTrainingJob(
        rr.CancelTrainingJobRequest(
            job_id=job_id, reason="wrong spec" if variant == 0 else "another reason", request_id=rid
        )
    )


def _is_queued(reply: Message) -> None:
    job = reply.job  # type: ignore[attr-defined]
    assert job.state == message_pb2.JOB_STATE_QUEUED and job.spec.seed == 7


def _is_cancelled(reply: Message) -> None:
    job = reply.job  # type: ignore[attr-defined]
    assert job.state == message_pb2.JOB_STATE_CANCELLED


MUTATIONS = [
    _Mutation("SubmitTrainingJob", _nothing, _submit, _is_queued),
    _Mutation("CancelTrainingJob", _queued_job, _cancel, _is_cancelled),
]
# Mutations whose retry needs more than a queue-only trainer (decision logs, rewards).
RETRIED_ELSEWHERE = {"LearnPolicy": "tests/inference/test_policy_loop.py"}
BY_RPC = pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.rpc for m in MUTATIONS])


async def _events(pool: asyncpg.Pool, model_name: str) -> list[asyncpg.Record]:
    """Every event of every job of the model, in log order."""
    return await pool.fetch(
        "SELECT e.stream_id, e.event_type, e.causation_id FROM trainer.events e "
        "JOIN trainer.jobs j ON e.stream_id = 'job-' || j.job_id "
        "WHERE j.model_name = $1 ORDER BY e.global_position",
        model_name,
    )


async def _code_of(call: Awaitable[Message]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def test_every_mutating_rpc_takes_a_request_id_and_is_in_the_table() -> None:
    service = service_pb2.DESCRIPTOR.services_by_name["Trainer"]
    mutating = {path.rsplit("/", 1)[-1] for path in mutating_methods(service)}
    assert mutating == {m.rpc for m in MUTATIONS} | RETRIED_ELSEWHERE.keys()
    for name in mutating:
        field = service.methods_by_name[name].input_type.fields_by_name.get("request_id")
        assert field is not None and field.type == field.TYPE_STRING, name


@BY_RPC
async def test_a_retry_after_a_lost_reply_applies_once_and_gets_the_reply(
    mutation: _Mutation,
    queue_only_trainer: TrainerStub,
    lossy: TrainerStub,
    link: ReplyDroppingLink,
    model_jobs: Dataset,
    db_pool: asyncpg.Pool,
) -> None:
    trainer, dataset = queue_only_trainer, model_jobs
    job_id = await mutation.prepare(trainer, dataset)
    before = len(await _events(db_pool, dataset.model_name))
    rid = str(uuid.uuid4())

    link.drop_next_replies(1)
    code, _ = await _code_of(mutation.call(lossy, dataset, job_id, rid, 0))
    assert code == grpc.StatusCode.UNAVAILABLE and link.replies_dropped >= 1
    committed = await _events(db_pool, dataset.model_name)
    assert len(committed) == before + 2, "the first attempt committed; its reply was lost"

    retried = await mutation.call(trainer, dataset, job_id, rid, 0)
    again = await mutation.call(lossy, dataset, job_id, rid, 0)

    mutation.check(retried)
    assert again == retried
    after = await _events(db_pool, dataset.model_name)
    assert after == committed, "the retries applied nothing new"
    assert [e["causation_id"] for e in after[before:]] == [rid, rid], "caused by the request"


@BY_RPC
async def test_the_same_id_for_another_request_is_refused(
    mutation: _Mutation, queue_only_trainer: TrainerStub, model_jobs: Dataset, db_pool: asyncpg.Pool
) -> None:
    trainer, dataset = queue_only_trainer, model_jobs
    job_id = await mutation.prepare(trainer, dataset)
    rid = str(uuid.uuid4())
    await mutation.call(trainer, dataset, job_id, rid, 0)
    applied = await _events(db_pool, dataset.model_name)

    code, details = await _code_of(mutation.call(trainer, dataset, job_id, rid, 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"request_id {rid!r} was already used for a different {mutation.rpc}" in details
    other = next(m for m in MUTATIONS if m.rpc != mutation.rpc)
    other_job = await other.prepare(trainer, dataset)
    code, details = await _code_of(other.call(trainer, dataset, other_job, rid, 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert f"already used for a {mutation.rpc} request" in details
    events = await _events(db_pool, dataset.model_name)
    assert [e for e in events if e["causation_id"] == rid] == [
        e for e in applied if e["causation_id"] == rid
    ], "neither refused call recorded anything"


@BY_RPC
async def test_concurrent_duplicates_apply_once(
    mutation: _Mutation, queue_only_trainer: TrainerStub, model_jobs: Dataset, db_pool: asyncpg.Pool
) -> None:
    trainer, dataset = queue_only_trainer, model_jobs
    job_id = await mutation.prepare(trainer, dataset)
    before = len(await _events(db_pool, dataset.model_name))
    rid = str(uuid.uuid4())

    replies = await asyncio.gather(
        *(mutation.call(trainer, dataset, job_id, rid, 0) for _ in range(8))
    )

    assert all(reply == replies[0] for reply in replies)
    mutation.check(replies[0])
    assert len(await _events(db_pool, dataset.model_name)) == before + 2


@pytest.mark.parametrize("rid", ["has space", "x" * 129, "-leading-dash", "naïve", "a/b"])
async def test_malformed_request_ids_are_invalid_argument(
    queue_only_trainer: TrainerStub, model_jobs: Dataset, rid: str
) -> None:
    code, details = await _code_of(_submit(queue_only_trainer, model_jobs, "", rid, 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid request id" in details


_SDK_CALLS: dict[str, Callable[[TrainerClient, Dataset, str], Awaitable[object]]] = {
    "SubmitTrainingJob": lambda sdk, dataset, job_id: sdk.submit(spec(dataset)),
    "CancelTrainingJob": lambda sdk, dataset, job_id: sdk.cancel(job_id, "wrong spec"),
}


@BY_RPC
async def test_the_sdk_sends_an_id_and_retries_a_lost_reply_safely(
    mutation: _Mutation,
    queue_only_trainer: TrainerStub,
    lossy: TrainerStub,
    link: ReplyDroppingLink,
    model_jobs: Dataset,
    db_pool: asyncpg.Pool,
) -> None:
    dataset = model_jobs
    job_id = await mutation.prepare(queue_only_trainer, dataset)
    before = len(await _events(db_pool, dataset.model_name))
    sdk = TrainerClient(lossy, actor="alice", retry=RetryPolicy(first_backoff_s=0.05))

    link.drop_next_replies(1)
    dropped = link.replies_dropped
    await _SDK_CALLS[mutation.rpc](sdk, dataset, job_id)

    assert link.replies_dropped == dropped + 1, "the first reply was lost, and retried"
    events = await _events(db_pool, dataset.model_name)
    assert len(events) == before + 2
    assert events[-1]["causation_id"], "sent with a request id"


async def test_the_cli_submits_and_cancels_once_when_a_reply_is_lost(
    queue_only_trainer: TrainerStub,
    link: ReplyDroppingLink,
    model_jobs: Dataset,
    test_settings: LatheSettings,
    db_pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    dataset = model_jobs
    path = tmp_path / "job.json"
    path.write_text(json_format.MessageToJson(spec(dataset)))
    through_link = test_settings.model_copy(update={"trainer_addr": link.address})

    link.drop_next_replies(1)
    code, output = await run_lathe(through_link, "train", "submit", str(path), "--no-watch")
    assert code == 0 and "queued" in output, output
    job_id = output.split("job ", 1)[1].split()[0]
    link.drop_next_replies(1)
    code, output = await run_lathe(through_link, "train", "cancel", job_id)
    assert code == 0 and "cancelled" in output, output

    assert link.replies_dropped >= 2
    events = await _events(db_pool, dataset.model_name)
    assert [e["event_type"].rsplit(".", 1)[-1] for e in events] == [
        "JobSubmitted",
        "JobQueued",
        "CancelRequested",
        "JobCancelled",
    ], "one job, submitted and cancelled once"
    assert all(e["causation_id"] for e in events)
