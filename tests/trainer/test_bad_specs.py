"""Bad specs are refused with a precise code and message, and nothing is recorded."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import grpc
import pytest

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from tests.trainer.helpers import DONE, T0, Dataset, spec, wait_for

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def cases(d: Dataset) -> list[tuple[str, dict, grpc.StatusCode, str]]:
    late = (T0 + timedelta(days=400)).isoformat()
    return [
        (
            "unknown feature service",
            {"featureService": "no_such_service"},
            NOT_FOUND,
            "no feature service named",
        ),
        ("unknown model", {"modelName": "no-such-model"}, NOT_FOUND, "no model named"),
        (
            "stale feature service version",
            {"featureServiceVersion": 7},
            PRECONDITION,
            "is at version 1",
        ),
        (
            "empty label set",
            {"labelSource": {"query": d.label_query().replace("ORDER BY", "WHERE false ORDER BY")}},
            PRECONDITION,
            "returned no rows",
        ),
        (
            "unknown model family",
            {"model": {"family": "xgboost_please"}},
            INVALID,
            "unknown model family",
        ),
        (
            "unknown hyper-parameter",
            {"model": {"family": "mlp", "hyperparameters": {"width": 3}}},
            INVALID,
            "not hyper-parameters of 'mlp'",
        ),
        (
            "negative learning rate",
            {"optimization": {"epochs": 2, "learningRate": -0.1}},
            INVALID,
            "learning_rate",
        ),
        ("zero epochs", {"optimization": {"epochs": 0}}, INVALID, "epochs must be at least 1"),
        (
            "a label query that writes",
            {"labelSource": {"query": f"DELETE FROM {d.labels} RETURNING loan_id"}},
            INVALID,
            "must be a SELECT",
        ),
        (
            "a label query that writes inside a SELECT",
            {
                "labelSource": {
                    "query": f"WITH gone AS (DELETE FROM {d.labels} RETURNING *) "
                    "SELECT loan_id, scored_at AS label_time, defaulted AS label FROM gone"
                }
            },
            INVALID,
            "must only read",
        ),
        (
            "two statements",
            {"labelSource": {"query": d.label_query() + "; DROP TABLE " + d.labels}},
            INVALID,
            "single SELECT",
        ),
        (
            "a label query past its statement timeout",
            {
                "labelSource": {
                    "query": "SELECT loan_id, scored_at AS label_time, defaulted AS label "
                    f"FROM {d.labels}, pg_sleep(2) AS nap",
                    "timeout": "0.3s",
                }
            },
            PRECONDITION,
            "statement timeout",
        ),
        (
            "a split with an empty side",
            {"split": {"validationStart": late}},
            PRECONDITION,
            "both sides",
        ),
        (
            "a sequence family without sequences",
            {"model": {"family": "sequence_transformer", "hyperparameters": {}}},
            INVALID,
            "name at least one",
        ),
        (
            "a sequence over a view the feature service does not read",
            {
                "model": {
                    "family": "sequence_transformer",
                    "hyperparameters": {},
                    "sequences": [
                        {"name": "payments", "features": ["other:amount"], "maxLength": 8}
                    ],
                }
            },
            INVALID,
            "'other:amount' is not served by feature service",
        ),
        (
            "a label query without the entity key",
            {
                "labelSource": {
                    "query": f"SELECT scored_at AS label_time, defaulted AS label FROM {d.labels}"
                }
            },
            INVALID,
            "'loan_id'",
        ),
    ]


async def test_bad_specs_are_refused_and_nothing_is_recorded(
    trainer: TrainerStub, dataset: Dataset, db_pool: asyncpg.Pool
) -> None:
    # Other tests of the session may have run jobs on this trainer: compare, don't count.
    jobs_before = (await trainer.ListTrainingJobs(rr.ListTrainingJobsRequest())).jobs
    events_before = await db_pool.fetchval("SELECT count(*) FROM trainer.events")
    for number, (name, overrides, code, fragment) in enumerate(cases(dataset)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await trainer.SubmitTrainingJob(
                rr.SubmitTrainingJobRequest(
                    spec=spec(dataset, **overrides), request_id=f"bad-spec-{number}"
                )
            )
        assert refused.value.code() == code, (name, refused.value.details())
        assert fragment in (refused.value.details() or ""), (name, refused.value.details())

    listed = await trainer.ListTrainingJobs(rr.ListTrainingJobsRequest())
    assert list(listed.jobs) == list(jobs_before), "no job half-created"
    assert await db_pool.fetchval("SELECT count(*) FROM trainer.events") == events_before
    unused = "SELECT count(*) FROM trainer.client_requests WHERE request_id LIKE 'bad-spec-%'"
    assert await db_pool.fetchval(unused) == 0, "a refused submit leaves its request id unused"
    assert await db_pool.fetchval(f"SELECT count(*) FROM {dataset.labels}") == dataset.rows


async def test_list_pages_by_model_and_state(trainer: TrainerStub, dataset: Dataset) -> None:
    job_ids = [await submit_queued(trainer, dataset) for _ in range(3)]
    seen, token = [], ""
    while True:
        page = await trainer.ListTrainingJobs(
            rr.ListTrainingJobsRequest(model_name=dataset.model_name, page_size=2, page_token=token)
        )
        seen += [j.job_id for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(job_ids)), "newest first, every job once"
    for job_id in job_ids:
        await trainer.CancelTrainingJob(rr.CancelTrainingJobRequest(job_id=job_id))
        await wait_for(trainer, job_id, DONE, 30)
    cancelled = await trainer.ListTrainingJobs(
        rr.ListTrainingJobsRequest(state=message_pb2.JOB_STATE_CANCELLED)
    )
    assert {j.job_id for j in cancelled.jobs} == set(job_ids)
    other = await trainer.ListTrainingJobs(rr.ListTrainingJobsRequest(model_name="other-model"))
    assert list(other.jobs) == []


async def submit_queued(trainer: TrainerStub, dataset: Dataset) -> str:
    reply = await trainer.SubmitTrainingJob(
        rr.SubmitTrainingJobRequest(spec=spec(dataset, optimization={"epochs": 500}))
    )
    return reply.job.job_id
