"""The kit's SERVER spans on a real server: parents, attributes, status, unsampled calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lathe.model_registry.v1 import request_response_pb2 as rr
from lathe.model_registry.v1 import service_pb2, service_pb2_grpc
from libs.errors import NotFound
from libs.grpckit import GrpcServer, open_channel

REGISTRY = service_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
GET_MODEL = "/lathe.model_registry.v1.ModelRegistry/GetModel"


class TraceEcho(service_pb2_grpc.ModelRegistryServicer):
    """Replies with the trace id the handler runs in; fails on request."""

    async def GetModel(self, request: rr.GetModelRequest, context: object) -> rr.GetModelResponse:
        if request.name == "missing":
            raise NotFound("no model named 'missing'")
        if request.name == "boom":
            raise RuntimeError("secret internals")
        trace_id = trace.get_current_span().get_span_context().trace_id
        return rr.GetModelResponse(model={"description": f"{trace_id:032x}"})


@pytest_asyncio.fixture(loop_scope="session")
async def address(span_exporter: InMemorySpanExporter) -> AsyncIterator[str]:
    server = GrpcServer(address="127.0.0.1:0", services=[REGISTRY])
    await server.start()
    server.bind(lambda s: service_pb2_grpc.add_ModelRegistryServicer_to_server(TraceEcho(), s))
    await server.set_serving(True)
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


def _server_spans(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.kind == SpanKind.SERVER and s.context.trace_id == trace_id
    ]


async def test_a_call_is_a_server_span_in_the_callers_trace(
    address: str, span_exporter: InMemorySpanExporter
) -> None:
    with trace.get_tracer("tests").start_as_current_span("caller") as root:
        async with open_channel(address) as channel:
            reply = await service_pb2_grpc.ModelRegistryStub(channel).GetModel(
                rr.GetModelRequest(name="m")
            )
    trace_id = root.get_span_context().trace_id
    assert reply.model.description == f"{trace_id:032x}"  # the handler ran inside the trace
    (server,) = _server_spans(span_exporter, trace_id)
    (client,) = [
        s
        for s in span_exporter.get_finished_spans()
        if s.kind == SpanKind.CLIENT and s.context.trace_id == trace_id
    ]
    assert server.name == GET_MODEL
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    attributes = dict(server.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "lathe.model_registry.v1.ModelRegistry"
    assert attributes["rpc.method"] == "GetModel"
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert attributes["network.peer.address"] == "127.0.0.1"
    assert isinstance(attributes["network.peer.port"], int)
    assert "grpc-python" in str(attributes["user_agent.original"])
    assert server.status.status_code == StatusCode.UNSET


@pytest.mark.parametrize(
    ("name", "code", "status"),
    [
        ("missing", grpc.StatusCode.NOT_FOUND, StatusCode.UNSET),  # the caller's mistake
        ("boom", grpc.StatusCode.INTERNAL, StatusCode.ERROR),  # the server's fault
    ],
)
async def test_a_failed_call_records_its_code(
    address: str,
    span_exporter: InMemorySpanExporter,
    name: str,
    code: grpc.StatusCode,
    status: StatusCode,
) -> None:
    with trace.get_tracer("tests").start_as_current_span("caller") as root:
        async with open_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await service_pb2_grpc.ModelRegistryStub(channel).GetModel(
                    rr.GetModelRequest(name=name)
                )
    assert raised.value.code() == code
    (server,) = _server_spans(span_exporter, root.get_span_context().trace_id)
    assert dict(server.attributes or {})["rpc.grpc.status_code"] == code.value[0]
    assert server.status.status_code == status
    recorded = [e.attributes.get("exception.type") for e in server.events if e.attributes]
    assert recorded == (["RuntimeError"] if code == grpc.StatusCode.INTERNAL else [])


async def test_an_unsampled_caller_keeps_its_trace_without_a_recorded_span(
    address: str, span_exporter: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    unsampled = f"00-{trace_id}-00f067aa0ba902b7-00"
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await service_pb2_grpc.ModelRegistryStub(channel).GetModel(
            rr.GetModelRequest(name="m"), metadata=[("traceparent", unsampled)]
        )
    # Calls the handler makes carry this trace id (and its "not sampled" flag) onward.
    assert reply.model.description == trace_id
    assert _server_spans(span_exporter, int(trace_id, 16)) == []
