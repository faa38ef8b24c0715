"""The trainer from Python: job specs from YAML or TOML, submit, follow, cancel.

    spec = load_spec(Path("credit.yaml"))        # the TrainingJobSpec fields, snake_case
    async with grpc.aio.insecure_channel("127.0.0.1:50053") as channel:
        trainer = TrainerClient(TrainerStub(channel), actor="alice")
        job = await trainer.submit(spec)
        async for event in trainer.watch(job.job_id):   # history first, then live
            ...

A spec file holds the fields of ``lathe.trainer.v1.TrainingJobSpec`` (snake_case or
camelCase); durations are strings such as ``"60s"`` and times RFC 3339 strings::

    model_name: credit-default
    feature_service: underwriting_full
    label_source:
      query: SELECT loan_id, scored_at AS label_time, defaulted AS label FROM public.outcomes
    split: {validation_start: "2018-03-01T00:00:00Z"}
    model: {family: ft_transformer, hyperparameters: {d_token: 32, n_blocks: 2}}
    optimization: {epochs: 5, batch_size: 256, learning_rate: 0.001}
    seed: 7
    resources: {processes: 2}

Submit and cancel are sent with a client request id (a fresh one per call unless the
caller gives one, e.g. to retry across processes) and retried with it after an ambiguous
failure, so a lost reply never queues a second job (``libs/sdk/retries.py``).
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from lathe.trainer.v1 import message_pb2
from lathe.trainer.v1 import request_response_pb2 as rr
from lathe.trainer.v1.service_pb2_grpc import TrainerStub
from libs.sdk.retries import DEFAULT_RETRY, RetryPolicy, new_request_id, with_retries


class SpecError(ValueError):
    """A spec file that does not parse as a TrainingJobSpec; the message says where."""


def parse_spec(document: Mapping[str, Any]) -> message_pb2.TrainingJobSpec:
    """A spec from a plain mapping (as YAML, TOML or JSON give it)."""
    try:
        return json_format.ParseDict(dict(document), message_pb2.TrainingJobSpec())
    except json_format.ParseError as error:
        raise SpecError(f"not a valid training job spec: {error}") from None


def load_spec(path: Path) -> message_pb2.TrainingJobSpec:
    """Read a ``.yaml``/``.yml``, ``.toml`` or ``.json`` spec file."""
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            document: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise SpecError(f"{path}: {error}") from None
    else:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SpecError(f"{path}: {error}") from None
    if not isinstance(document, dict):
        raise SpecError(f"{path} must hold a mapping of spec fields, got {type(document).__name__}")
    return parse_spec(_stringify_times(document))


def _stringify_times(value: Any) -> Any:
    """YAML and TOML parse timestamps into datetimes; the protobuf JSON form wants strings."""
    if isinstance(value, dict):
        return {k: _stringify_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_times(v) for v in value]
    if hasattr(value, "isoformat") and not isinstance(value, str):
        text = value.isoformat()
        return text if "+" in text or text.endswith("Z") else text + "Z"
    return value


class TrainerClient:
    """Trainer calls with the caller's identity (and token) on every change.

    Each change carries a client request id and is retried with it after an ambiguous
    failure (UNAVAILABLE, DEADLINE_EXCEEDED), as ``retry`` says.
    """

    def __init__(
        self,
        stub: TrainerStub,
        *,
        actor: str = "",
        token: str = "",
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.stub = stub
        metadata = [("lathe-actor", actor)] if actor else []
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        self._metadata = tuple(metadata)
        self._retry = retry

    async def submit(
        self, spec: message_pb2.TrainingJobSpec, *, request_id: str = ""
    ) -> message_pb2.TrainingJob:
        """Queue a job; retried safely: however often, at most one job is queued per id."""
        request = rr.SubmitTrainingJobRequest(spec=spec, request_id=request_id or new_request_id())
        reply = await with_retries(
            self._retry,
            lambda: self.stub.SubmitTrainingJob(
                request, metadata=self._metadata, timeout=self._retry.attempt_timeout_s
            ),
        )
        return reply.job

    async def get(self, job_id: str) -> message_pb2.TrainingJob:
        return (await self.stub.GetTrainingJob(rr.GetTrainingJobRequest(job_id=job_id))).job

    async def list(
        self, *, model_name: str = "", state: int = 0, limit: int = 100
    ) -> list[message_pb2.TrainingJob]:
        jobs: list[message_pb2.TrainingJob] = []
        token = ""
        while len(jobs) < limit:
            page = await self.stub.ListTrainingJobs(
                rr.ListTrainingJobsRequest(
                    model_name=model_name,
                    state=state,  # type: ignore[arg-type]
                    page_size=min(100, limit - len(jobs)),
                    page_token=token,
                )
            )
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                break
        return jobs

    async def cancel(
        self, job_id: str, reason: str = "", *, request_id: str = ""
    ) -> message_pb2.TrainingJob:
        """Ask the job to stop; the job as the cancel left it (retried like ``submit``)."""
        request = rr.CancelTrainingJobRequest(
            job_id=job_id, reason=reason, request_id=request_id or new_request_id()
        )
        reply = await with_retries(
            self._retry,
            lambda: self.stub.CancelTrainingJob(
                request, metadata=self._metadata, timeout=self._retry.attempt_timeout_s
            ),
        )
        return reply.job

    async def watch(self, job_id: str) -> AsyncIterator[rr.WatchTrainingJobResponse]:
        """Every event of the job from the first, then live until it ends."""
        async for event in self.stub.WatchTrainingJob(rr.WatchTrainingJobRequest(job_id=job_id)):
            yield event
