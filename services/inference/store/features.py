"""The feature store as Predict uses it: one GetOnlineFeatures call per request, at most.

The call inherits what is left of the Predict call's deadline (``open_channel``'s
interceptor) and continues its trace. The feature store's own verdicts keep their
meaning: its INVALID_ARGUMENT (a wrongly typed request feature, a missing join key)
is the caller's mistake and stays INVALID_ARGUMENT with its message; NOT_FOUND (a
feature the model reads no longer exists) is a deployment problem, FAILED_PRECONDITION.

Concurrent requests share calls, work-conserving like the batcher: while fewer than
``max_in_flight`` (default 1) calls for the same kind of rows (feature selection, entity keys and
request-time inputs) are out, a request calls at once, alone; the requests that arrive
while they are out wait together and go as one call the moment one comes back. At low
load nothing waits; at high load the feature store answers one call of many rows
instead of many calls of one (its fixed cost per call, ~0.5 ms, is most of a one-row
call's), and the rows come back in the same loop iteration, so the batcher scores them
as one batch. A shared call carries the latest of its requests' deadlines (each request
still ends at its own: the server cancels it) and continues the first one's trace. If
the feature store refuses a shared call as INVALID_ARGUMENT, each request is asked
again alone, so one caller's mistyped input never fails another's request.

The channel is a plain one, not ``libs.grpckit.open_channel``: the kit's interceptors
(deadline, OpenTelemetry client span) put grpc.aio on its intercepted-call path, which
cost ~40-50 us more CPU per call here (2-core machine, 16 concurrent callers: ~120 vs
~165 us), on the one call every Predict makes. What they do is done here instead: the
deadline is passed explicitly, the trace context is injected (W3C ``traceparent``),
and a CLIENT span is opened only when the trace is recorded.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.feature_store.v1 import request_response_pb2 as fsr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.errors import FailedPrecondition, InvalidArgument, Unavailable
from libs.grpckit.client import CHANNEL_OPTIONS
from services.inference.domain.errors import FeatureDeadline

_METHOD = "/lathe.feature_store.v1.FeatureStore/GetOnlineFeatures"
MAX_CALL_S = 10.0
"""The longest a feature call may take, whatever its requests' deadlines: one stuck on a
silent connection would otherwise hold every later request of its kind of rows (they
wait to share the next call) until the kernel gives the connection up, minutes later."""
_SPAN_ATTRIBUTES = {
    "rpc.system": "grpc",
    "rpc.service": "lathe.feature_store.v1.FeatureStore",
    "rpc.method": "GetOnlineFeatures",
}
_tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class FeatureQuery:
    """One request's rows, as GetOnlineFeatures takes them."""

    feature_service: str
    """The models' feature service, or "" to name ``features`` instead."""
    features: tuple[str, ...]
    entities: Mapping[str, Sequence[fs.Value]]
    """Join key -> one value per row."""
    request_data: Mapping[str, Sequence[fs.Value]]
    """Request-time input -> one value per row (an empty ``Value`` where a row has none)."""
    rows: int
    deadline: float | None
    """``time.monotonic()`` deadline of the request."""

    def lane(self) -> tuple[object, ...]:
        """Queries that can share a call have the same lane."""
        selection = self.features if not self.feature_service else ()
        return (self.feature_service, selection, tuple(self.entities), tuple(self.request_data))


@dataclass(frozen=True)
class FeatureRows:
    """A query's rows of a GetOnlineFeatures reply, in the query's order."""

    names: tuple[str, ...]
    """``view:feature`` of every value in a vector."""
    vectors: Sequence[fs.FeatureVector]
    read_at_us: int = 0
    """When the call was sent (epoch microseconds): the rows' reference time."""


@dataclass(eq=False)
class _Waiting:
    query: FeatureQuery
    future: asyncio.Future[FeatureRows]


@dataclass(eq=False)
class _Group:
    """Queries waiting to go out as one call."""

    context: contextvars.Context
    """The first query's context: the shared call continues its trace."""
    waiting: list[_Waiting] = field(default_factory=list)
    rows: int = 0


@dataclass(eq=False)
class _Lane:
    key: tuple[object, ...]
    in_flight: int = 0
    groups: deque[_Group] = field(default_factory=deque)


@dataclass
class FeatureCallStats:
    """Counters for tests and metrics."""

    calls: int = 0
    shared_calls: int = 0
    """Calls that carried more than one request's rows."""
    requests: int = 0


class OnlineFeatures:
    def __init__(
        self, address: str, *, max_in_flight: int = 1, max_rows_per_call: int = 4096
    ) -> None:
        """``max_in_flight`` 0: every request calls alone, whatever else is out."""
        # The kit's options (message sizes, reconnect backoff capped at 2 s: a feature store
        # back from an outage answers Predict again within seconds, not minutes).
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = FeatureStoreStub(self._channel)
        self._max_in_flight = max_in_flight
        self._max_rows = max_rows_per_call
        self._lanes: dict[tuple[object, ...], _Lane] = {}
        self._calls: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        self.stats = FeatureCallStats()

    async def close(self) -> None:
        await self._channel.close()

    @property
    def open_lanes(self) -> int:
        """Lanes with a call out or queries waiting (idle ones are dropped)."""
        return len(self._lanes)

    async def get(self, query: FeatureQuery) -> FeatureRows:
        """The online features of ``query``'s rows."""
        self.stats.requests += 1
        if self._max_in_flight <= 0:
            return await self._call([query], query.deadline)
        key = query.lane()
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key)
        if lane.in_flight < self._max_in_flight and not lane.groups:
            lane.in_flight += 1
            try:
                return await self._call([query], query.deadline)
            finally:
                lane.in_flight -= 1
                self._send_waiting(lane)
        group = lane.groups[-1] if lane.groups else None
        if group is None or group.rows + query.rows > self._max_rows:
            group = _Group(contextvars.copy_context())
            lane.groups.append(group)
        future: asyncio.Future[FeatureRows] = asyncio.get_running_loop().create_future()
        group.waiting.append(_Waiting(query, future))
        group.rows += query.rows
        return await future

    def _send_waiting(self, lane: _Lane) -> None:
        """Send what waits in ``lane`` as far as calls may go out; an idle lane is dropped
        (its key holds names the caller chose: kept, every new set of them would stay)."""
        if not lane.groups and not lane.in_flight and self._lanes.get(lane.key) is lane:
            del self._lanes[lane.key]
        while lane.groups and lane.in_flight < self._max_in_flight:
            group = lane.groups.popleft()
            lane.in_flight += 1
            task = asyncio.get_running_loop().create_task(
                self._shared(lane, group), context=group.context
            )
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _shared(self, lane: _Lane, group: _Group) -> None:
        """Runs in a copy of the first request's context: the call continues its trace."""
        try:
            now = time.monotonic()
            live = [w for w in group.waiting if not w.future.done()]
            for w in live:
                if w.query.deadline is not None and w.query.deadline <= now:
                    w.future.set_exception(FeatureDeadline("deadline passed while queued"))
            live = [w for w in live if not w.future.done()]
            if not live:
                return
            deadlines = [w.query.deadline for w in live]
            latest = None if None in deadlines else max(d for d in deadlines if d is not None)
            try:
                rows = await self._call([w.query for w in live], latest)
            except InvalidArgument:
                if len(live) == 1:
                    raise
                # Someone's rows were refused: ask for each request's rows alone.
                await asyncio.gather(*(self._alone(w) for w in live))
                return
            start = 0
            for w in live:
                end = start + w.query.rows
                if not w.future.done():
                    w.future.set_result(
                        FeatureRows(rows.names, rows.vectors[start:end], rows.read_at_us)
                    )
                start = end
        except Exception as exc:  # every waiter hears what happened to its call
            for w in group.waiting:
                if not w.future.done():
                    w.future.set_exception(exc)
        finally:
            lane.in_flight -= 1
            self._send_waiting(lane)

    async def _alone(self, waiting: _Waiting) -> None:
        try:
            rows = await self._call([waiting.query], waiting.query.deadline)
        except Exception as exc:
            if not waiting.future.done():
                waiting.future.set_exception(exc)
            return
        if not waiting.future.done():
            waiting.future.set_result(rows)

    async def _call(self, queries: Sequence[FeatureQuery], deadline: float | None) -> FeatureRows:
        """One GetOnlineFeatures call for ``queries``' rows, one after another."""
        first = queries[0]
        if len(queries) == 1:
            entities = {k: fs.RepeatedValue(values=v) for k, v in first.entities.items()}
            request_data = {k: fs.RepeatedValue(values=v) for k, v in first.request_data.items()}
        else:
            entities = {
                k: fs.RepeatedValue(values=[v for q in queries for v in q.entities[k]])
                for k in first.entities
            }
            request_data = {
                k: fs.RepeatedValue(values=[v for q in queries for v in q.request_data[k]])
                for k in first.request_data
            }
        request = fsr.GetOnlineFeaturesRequest(entities=entities, request_data=request_data)
        if first.feature_service:
            request.feature_service = first.feature_service
        else:
            request.feature_list.features.extend(first.features)
        remaining = MAX_CALL_S if deadline is None else deadline - time.monotonic()
        timeout = max(0.0, min(remaining, MAX_CALL_S))
        read_at_us = time.time_ns() // 1000
        self.stats.calls += 1
        if len(queries) > 1:
            self.stats.shared_calls += 1
        if not trace.get_current_span().is_recording():
            reply = await self._send(request, timeout)
        else:
            with _tracer.start_as_current_span(
                _METHOD, kind=SpanKind.CLIENT, attributes=_SPAN_ATTRIBUTES
            ) as span:
                span.set_attribute("lathe.rows", sum(q.rows for q in queries))
                span.set_attribute("lathe.requests", len(queries))
                reply = await self._send(request, timeout)
        return FeatureRows(tuple(reply.feature_names), reply.results, read_at_us)

    async def _send(
        self, request: fsr.GetOnlineFeaturesRequest, timeout_s: float | None
    ) -> fsr.GetOnlineFeaturesResponse:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # the current span's context (none outside a trace)
        try:
            return await self._stub.GetOnlineFeatures(  # type: ignore[no-any-return]
                request, timeout=timeout_s, metadata=tuple(carrier.items()) if carrier else None
            )
        except grpc.aio.AioRpcError as error:
            span = trace.get_current_span()
            if span.is_recording():
                span.set_status(Status(StatusCode.ERROR, error.code().name))
            code, details = error.code(), error.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(f"the feature store refused the rows: {details}") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    f"the feature store does not serve what this model reads: {details}"
                ) from None
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                raise FeatureDeadline(details) from None
            raise Unavailable(f"the feature store answered {code.name}: {details}") from None
