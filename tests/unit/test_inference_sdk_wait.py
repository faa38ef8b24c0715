"""``InferenceClient.wait_until_serving`` against a scripted GetDeployment: a slow poll is
polled again, no poll outlives the overall timeout, the alias must still ask for the
version, and only a FAILED deployment's refusal of that version ends the wait.

Against a real gRPC server in this process.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from lathe.inference.v1 import message_pb2 as m
from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1 import service_pb2_grpc
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from libs.sdk.inference import DeploymentRefused, InferenceClient


def _deployment(
    serving: int,
    requested: int,
    state: int = m.DEPLOYMENT_STATE_LOADING,
    failed: int = 0,
) -> m.Deployment:
    d = m.Deployment(
        model_name="m",
        alias="production",
        serving_version=serving,
        requested_version=requested,
        warm=bool(serving),
        state=state,
    )
    if failed:
        d.failure.version, d.failure.stage, d.failure.reason = failed, "load", "MemoryError"
    return d


SERVING_7 = _deployment(7, 7, m.DEPLOYMENT_STATE_SERVING)


class Scripted(service_pb2_grpc.InferenceServicer):
    """Answers GetDeployment with ``script``'s steps in turn, the last one for ever; a step
    is (seconds to take first, the deployment)."""

    def __init__(self) -> None:
        self.script: list[tuple[float, m.Deployment]] = []
        self.polls: list[tuple[float, float | None]] = []
        """Per poll: when it arrived (monotonic) and the seconds its deadline left."""

    async def GetDeployment(  # noqa: N802 (the generated servicer's name)
        self, request: rr.GetDeploymentRequest, context: grpc.aio.ServicerContext
    ) -> rr.GetDeploymentResponse:
        self.polls.append((time.monotonic(), context.time_remaining()))
        delay, deployment = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        await asyncio.sleep(delay)
        return rr.GetDeploymentResponse(deployment=deployment)


@pytest_asyncio.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, InferenceStub]]:
    servicer = Scripted()
    server = grpc.aio.server()
    service_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, InferenceStub(channel)
    await server.stop(0)


async def _wait(client: InferenceClient, **kwargs: object) -> object:
    """The wait, failing the test rather than hanging if it does not end in 10 s."""
    return await asyncio.wait_for(client.wait_until_serving("m", 7, **kwargs), 10)  # type: ignore[arg-type]


async def test_a_poll_with_no_answer_in_time_is_polled_again(
    scripted: tuple[Scripted, InferenceStub],
) -> None:
    servicer, stub = scripted
    servicer.script = [(0.0, _deployment(6, 7)), (0.5, SERVING_7), (0.0, SERVING_7)]
    progress: list[str] = []
    client = InferenceClient(stub, timeout_s=0.2)  # the slow poll outlives its 0.2 s
    served = await _wait(client, timeout_s=5, poll_s=0.01, on_progress=progress.append)
    assert served.serving_version == 7  # type: ignore[attr-defined]
    assert len(servicer.polls) == 3
    assert progress[1].startswith("no answer within 0.2s; loading, requested v7, serving v6")


async def test_no_poll_outlives_the_overall_timeout(
    scripted: tuple[Scripted, InferenceStub],
) -> None:
    servicer, stub = scripted
    servicer.script = [(0.0, _deployment(6, 7))]
    client = InferenceClient(stub, timeout_s=5.0)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="loading, requested v7, serving v6"):
        await _wait(client, timeout_s=0.3, poll_s=0.05)
    assert len(servicer.polls) >= 3
    # gRPC sends a timeout rounded up, and the server's clock is read coarsely: a hair over.
    assert all(
        left is not None and at + left <= start + 0.3 + 0.03 for at, left in servicer.polls
    ), [(at - start, left) for at, left in servicer.polls]

    servicer.script = [(5.0, _deployment(6, 7))]  # never answers in time
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no answer within"):
        await _wait(client, timeout_s=0.3)
    assert time.monotonic() - start < 1.0  # not the client's 5 s per call


async def test_the_alias_must_still_ask_for_the_version(
    scripted: tuple[Scripted, InferenceStub],
) -> None:
    servicer, stub = scripted
    moved_on = _deployment(7, 8)  # v7 serves, but the alias moved to v8 (loading)
    servicer.script = [(0.0, moved_on), (0.0, SERVING_7)]
    progress: list[str] = []
    served = await _wait(InferenceClient(stub), poll_s=0.01, on_progress=progress.append)
    assert served.requested_version == 7  # type: ignore[attr-defined]
    assert progress == ["loading, requested v8, serving v7"]

    servicer.script = [(0.0, moved_on)]
    with pytest.raises(TimeoutError, match="requested v8, serving v7"):
        await _wait(InferenceClient(stub), timeout_s=0.2, poll_s=0.01)


async def test_only_a_failed_deployment_refusing_the_version_ends_the_wait(
    scripted: tuple[Scripted, InferenceStub],
) -> None:
    servicer, stub = scripted
    client = InferenceClient(stub)
    # v7 refused before, loaded again now: the old refusal does not end the wait.
    reloading = _deployment(6, 7, m.DEPLOYMENT_STATE_LOADING, failed=7)
    servicer.script = [(0.0, reloading), (0.0, SERVING_7)]
    served = await _wait(client, poll_s=0.01)
    assert served.serving_version == 7  # type: ignore[attr-defined]

    servicer.script = [(0.0, _deployment(6, 7, m.DEPLOYMENT_STATE_FAILED, failed=7))]
    with pytest.raises(DeploymentRefused, match="v7 as production at load: MemoryError"):
        await _wait(client, poll_s=0.01)
    # Another version's refusal is not this one's.
    servicer.script = [(0.0, _deployment(6, 8, m.DEPLOYMENT_STATE_FAILED, failed=8))]
    with pytest.raises(TimeoutError, match="failed, requested v8"):
        await _wait(client, timeout_s=0.2, poll_s=0.01)


@pytest.mark.parametrize("timeout_s", [math.nan, -1.0, -math.inf, math.inf])
async def test_a_timeout_that_is_no_number_of_seconds_is_refused(
    scripted: tuple[Scripted, InferenceStub], timeout_s: float
) -> None:
    servicer, stub = scripted
    servicer.script = [(0.0, _deployment(6, 7))]
    with pytest.raises(ValueError, match="timeout_s must be a finite number of seconds"):
        await _wait(InferenceClient(stub), timeout_s=timeout_s)
    assert not servicer.polls
