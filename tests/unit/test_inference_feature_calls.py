"""Predict's feature calls: alone at low load, shared while one is out, errors kept apart.

Against a real gRPC server in this process whose GetOnlineFeatures echoes each row's
entity key and request value back (so every request can check it got its own rows),
and can be held to build a queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fsr
from lathe.feature_store.v1 import service_pb2_grpc
from libs.errors import InvalidArgument
from services.inference.store.features import MAX_CALL_S, FeatureQuery, OnlineFeatures


class EchoFeatures(service_pb2_grpc.FeatureStoreServicer):
    """Row i's features: its loan id and its amount; a negative amount is refused."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float | None, dict[str, str]]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def GetOnlineFeatures(  # noqa: N802 (the generated servicer's name)
        self, request: fsr.GetOnlineFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> fsr.GetOnlineFeaturesResponse:
        loans = [v.string_value for v in request.entities["loan_id"].values]
        amounts = [v.float64_value for v in request.request_data["amount"].values]
        metadata = dict(context.invocation_metadata() or ())
        self.calls.append((len(loans), context.time_remaining(), metadata))
        await self.gate.wait()
        if any(a < 0 for a in amounts):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "amount must be >= 0")
        reply = fsr.GetOnlineFeaturesResponse(feature_names=["v:loan", "v:amount"])
        for loan, amount in zip(loans, amounts, strict=True):
            vector = reply.results.add()
            vector.values.add(string_value=loan)
            vector.values.add(float64_value=amount)
            vector.statuses.extend([fs.FEATURE_STATUS_PRESENT] * 2)
        return reply


@pytest_asyncio.fixture
async def store() -> AsyncIterator[tuple[EchoFeatures, str]]:
    servicer = EchoFeatures()
    server = grpc.aio.server()
    service_pb2_grpc.add_FeatureStoreServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


def _query(loans: list[str], amount: float = 1.0, deadline: float | None = None) -> FeatureQuery:
    return FeatureQuery(
        feature_service="svc",
        features=(),
        entities={"loan_id": [fs.Value(string_value=loan) for loan in loans]},
        request_data={"amount": [fs.Value(float64_value=amount) for _ in loans]},
        rows=len(loans),
        deadline=deadline,
    )


def _rows(answer) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(v.values[0].string_value, v.values[1].float64_value) for v in answer.vectors]


async def test_a_lone_request_calls_at_once_and_concurrent_ones_share_the_next_call(
    store: tuple[EchoFeatures, str],
) -> None:
    servicer, address = store
    features = OnlineFeatures(address, max_in_flight=1)
    alone = await features.get(_query(["L1"], 5.0))
    assert _rows(alone) == [("L1", 5.0)] and len(servicer.calls) == 1
    servicer.gate.clear()
    first = asyncio.create_task(features.get(_query(["A"], 1.0)))
    await asyncio.sleep(0.05)  # out, held by the server
    later = [
        asyncio.create_task(features.get(_query([f"B{i}", f"C{i}"], float(i)))) for i in range(6)
    ]
    await asyncio.sleep(0.05)
    assert len(servicer.calls) == 2  # the six wait for the one out
    servicer.gate.set()
    assert _rows(await first) == [("A", 1.0)]
    for i, task in enumerate(later):  # each got its own rows, in its order
        assert _rows(await task) == [(f"B{i}", float(i)), (f"C{i}", float(i))]
    assert [rows for rows, _, _ in servicer.calls] == [1, 1, 12]
    assert features.stats.shared_calls == 1 and features.stats.requests == 8
    await features.close()


async def test_one_callers_refused_rows_never_fail_another_request(
    store: tuple[EchoFeatures, str],
) -> None:
    servicer, address = store
    features = OnlineFeatures(address, max_in_flight=1)
    servicer.gate.clear()
    first = asyncio.create_task(features.get(_query(["A"])))
    await asyncio.sleep(0.05)
    good = asyncio.create_task(features.get(_query(["G"], 2.0)))
    bad = asyncio.create_task(features.get(_query(["X"], -1.0)))
    await asyncio.sleep(0.05)
    servicer.gate.set()
    await first
    assert _rows(await good) == [("G", 2.0)]
    with pytest.raises(InvalidArgument, match="amount must be >= 0"):
        await bad
    # The shared call was refused, then each request asked alone.
    assert [rows for rows, _, _ in servicer.calls] == [1, 2, 1, 1]
    await features.close()


async def test_without_sharing_every_request_calls_alone(store: tuple[EchoFeatures, str]) -> None:
    servicer, address = store
    features = OnlineFeatures(address, max_in_flight=0)
    servicer.gate.clear()
    tasks = [asyncio.create_task(features.get(_query([f"L{i}"]))) for i in range(4)]
    await asyncio.sleep(0.05)
    assert len(servicer.calls) == 4
    servicer.gate.set()
    await asyncio.gather(*tasks)
    await features.close()


async def test_calls_carry_the_deadline_and_the_trace(store: tuple[EchoFeatures, str]) -> None:
    servicer, address = store
    features = OnlineFeatures(address, max_in_flight=1)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("Predict") as span:
        await features.get(_query(["L1"], deadline=time.monotonic() + 3.0))
    _, remaining, metadata = servicer.calls[0]
    # (gRPC rounds a timeout up on the wire: the server may see a little more)
    assert remaining is not None and 2.0 < remaining <= 3.5
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert trace_id in metadata["traceparent"]  # W3C context: the feature store's span joins
    servicer.gate.clear()
    first = asyncio.create_task(features.get(_query(["A"], deadline=time.monotonic() + 1.0)))
    await asyncio.sleep(0.05)
    shared = [
        asyncio.create_task(features.get(_query([f"S{i}"], deadline=time.monotonic() + s)))
        for i, s in enumerate((1.0, 4.0))
    ]
    await asyncio.sleep(0.05)
    servicer.gate.set()
    await asyncio.gather(first, *shared)
    _, remaining, _ = servicer.calls[-1]
    assert remaining is not None and 3.0 < remaining <= 4.5  # the latest of the two
    await features.close()


async def test_a_call_never_outlives_the_cap_even_without_a_deadline(
    store: tuple[EchoFeatures, str],
) -> None:
    """A request without a deadline (or with a long one) must not leave a call that a
    silent connection holds for minutes, with every later request of its kind waiting."""
    servicer, address = store
    features = OnlineFeatures(address, max_in_flight=1)
    await features.get(_query(["L1"]))
    await features.get(_query(["L2"], deadline=time.monotonic() + 3600))
    remaining = [call[1] for call in servicer.calls]
    assert all(r is not None and r <= MAX_CALL_S + 0.5 for r in remaining), remaining
    await features.close()


async def test_lanes_end_with_their_calls(store: tuple[EchoFeatures, str]) -> None:
    """Lanes are keyed by request feature names the caller chose: none outlives its calls."""
    servicer, address = store
    features = OnlineFeatures(address, max_in_flight=1)
    servicer.gate.clear()
    queries = []
    for i in range(20):
        query = _query([f"L{i}"])
        extra = {f"unused_{i}": [fs.Value(float64_value=0.0)], **query.request_data}
        queries.append(dataclasses.replace(query, request_data=extra))
    tasks = [asyncio.create_task(features.get(q)) for q in queries * 2]  # half of them wait
    await asyncio.sleep(0.05)
    assert features.open_lanes == 20
    servicer.gate.set()
    await asyncio.gather(*tasks)

    assert features.open_lanes == 0
    await features.close()
