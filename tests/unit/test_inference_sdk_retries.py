"""The SDK retries Predict only where safe, as the same decision, within one deadline.

Against a real gRPC server in this process that fails the first tries as told.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from lathe.inference.v1 import request_response_pb2 as rr
from lathe.inference.v1 import service_pb2_grpc
from lathe.inference.v1.service_pb2_grpc import InferenceStub
from libs.sdk.inference import InferenceClient, PredictRow
from libs.sdk.retries import RetryPolicy


class Flaky(service_pb2_grpc.InferenceServicer):
    """Fails with ``codes`` one after another, then scores every row 0.5."""

    def __init__(self) -> None:
        self.codes: list[grpc.StatusCode] = []
        self.seen: list[tuple[list[str], float | None]] = []

    async def Predict(  # noqa: N802 (the generated servicer's name)
        self, request: rr.PredictRequest, context: grpc.aio.ServicerContext
    ) -> rr.PredictResponse:
        self.seen.append(([r.decision_id for r in request.rows], context.time_remaining()))
        if self.codes:
            await context.abort(self.codes.pop(0), "not now")
        response = rr.PredictResponse(output_names=["p"])
        for r in request.rows:
            prediction = response.predictions.add(scores=[0.5], model_version=1, arm=1)
            prediction.decision_id = r.decision_id
        return response


@pytest_asyncio.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, InferenceStub]]:
    servicer = Flaky()
    server = grpc.aio.server()
    service_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, InferenceStub(channel)
    await server.stop(0)


ROWS = [PredictRow({"loan_id": "L1"}), PredictRow({"loan_id": "L2"}, decision_id="mine")]


async def test_unavailable_and_a_full_queue_are_retried_as_the_same_decisions(
    flaky: tuple[Flaky, InferenceStub],
) -> None:
    servicer, stub = flaky
    servicer.codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED]
    result = await InferenceClient(stub, timeout_s=5.0).predict("m", ROWS)
    assert [r.scores["p"] for r in result.rows] == [0.5, 0.5]
    ids = [ids for ids, _ in servicer.seen]
    assert len(ids) == 3 and ids[0] == ids[1] == ids[2]  # one decision, asked three times
    assert ids[0][0] and ids[0][1] == "mine"
    remaining = [left for _, left in servicer.seen]
    # gRPC rounds a timeout *up* on the wire (4.9998 s travels as "5S") and the server
    # reads its clock coarsely, so a first try can see a hair over the 5 s it was given.
    assert all(left is not None and left <= 5.0 + 0.05 for left in remaining)
    # One deadline shared by the tries: the last try had the back-off (0.05 + 0.1 s) less.
    assert remaining[2] is not None and remaining[0] is not None
    assert remaining[2] < remaining[0] - 0.1


async def test_what_will_not_change_is_not_retried(flaky: tuple[Flaky, InferenceStub]) -> None:
    servicer, stub = flaky
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        servicer.codes, servicer.seen = [code], []
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await InferenceClient(stub).predict("m", ROWS)
        assert failed.value.code() == code and len(servicer.seen) == 1


async def test_retries_stop_at_the_deadline(flaky: tuple[Flaky, InferenceStub]) -> None:
    servicer, stub = flaky
    servicer.codes = [grpc.StatusCode.UNAVAILABLE] * 50
    client = InferenceClient(
        stub, timeout_s=0.3, retry=RetryPolicy(attempts=50, first_backoff_s=0.05)
    )
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await client.predict("m", ROWS)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 0.5 and 2 <= len(servicer.seen) < 10
