"""The one server interceptor every Lathe service runs.

Per call it: opens the call's SERVER span in the caller's trace (``server_spans``),
checks the bearer token on mutating RPCs when the service has one, answers
INVALID_ARGUMENT for requests that do not decode or fail the generic checks
(``decoding``), records the deadline for propagation (and for bounding SQL), lets
pre-serialized replies (``Encoded``) through as they are, and turns domain errors into
status codes with their message. A database outage becomes UNAVAILABLE and a
statement cut off by the deadline DEADLINE_EXCEEDED (``libs.db.errors``, ADR 0014),
without a log line per call (the pool logs an outage once). Anything else unexpected becomes
INTERNAL with the trace id to look up, never a stack trace on the wire. One
interceptor rather than several, and one wrapped handler per method built once rather
than per call, keep the per-call overhead to a single wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from opentelemetry import trace

from libs.errors import InvalidArgument, LatheError
from libs.grpckit.deadlines import reset_deadline, set_deadline_from_remaining
from libs.grpckit.decoding import Rejected, checked_deserializer
from libs.grpckit.encoded import allowing_encoded
from libs.grpckit.errors import status_code_for
from libs.grpckit.server_spans import MethodSpans

_log = logging.getLogger(__name__)

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


class LatheServerInterceptor(grpc.aio.ServerInterceptor):
    """Tracing, auth for mutating RPCs, deadline propagation and error mapping."""

    def __init__(
        self,
        *,
        auth_token: str | None,
        mutating: frozenset[str],
        starting: Mapping[str, grpc.RpcMethodHandler],
        is_ready: Callable[[], bool],
    ) -> None:
        self._expected_auth = f"Bearer {auth_token}".encode() if auth_token else None
        self._mutating = mutating
        self._starting = starting
        self._is_ready = is_ready
        self._tracer = trace.get_tracer(__name__)
        # Servicers' handlers live as long as the server: each is wrapped once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            # Until the servicers are bound, their methods answer UNAVAILABLE (traced too).
            handler = None if self._is_ready() else self._starting.get(method)
            if handler is None:
                return None
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        needs_auth = self._expected_auth is not None and method in self._mutating
        spans = MethodSpans(self._tracer, method)
        drains = handler.request_streaming
        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary
            wrapped: Behavior = self._wrap_unary(behavior, method, spans, needs_auth, drains)
        else:
            behavior = handler.unary_stream or handler.stream_stream
            wrapped = self._wrap_streaming(behavior, method, spans, needs_auth, drains)
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        deserializer = handler.request_deserializer
        if deserializer is not None:
            deserializer = checked_deserializer(deserializer, streaming=handler.request_streaming)
        return factory(
            wrapped,
            request_deserializer=deserializer,
            response_serializer=allowing_encoded(handler.response_serializer),
        )

    def _wrap_unary(
        self, behavior: Behavior, method: str, spans: MethodSpans, needs_auth: bool, drains: bool
    ) -> Behavior:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = spans.open(context)
            token = set_deadline_from_remaining(context.time_remaining())
            try:
                if needs_auth:
                    await self._authenticate(context, method)
                if type(request) is Rejected:
                    raise InvalidArgument(request.message)
                return await behavior(request, context)
            except Exception as exc:
                if drains:
                    await _read_what_is_still_coming(exc, context)
                await _abort_for(exc, context, method)
            finally:
                reset_deadline(token)
                spans.end(span, context)

        return unary

    def _wrap_streaming(
        self, behavior: Behavior, method: str, spans: MethodSpans, needs_auth: bool, drains: bool
    ) -> Behavior:
        if not inspect.isasyncgenfunction(behavior):
            # Handlers that write with context.write() are plain coroutines.
            return self._wrap_unary(behavior, method, spans, needs_auth, drains)

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            span = spans.open(context)
            token = set_deadline_from_remaining(context.time_remaining())
            try:
                if needs_auth:
                    await self._authenticate(context, method)
                if type(request) is Rejected:
                    raise InvalidArgument(request.message)
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                if drains:
                    await _read_what_is_still_coming(exc, context)
                await _abort_for(exc, context, method)
            finally:
                reset_deadline(token)
                spans.end(span, context)

        return streaming

    async def _authenticate(self, context: grpc.aio.ServicerContext, method: str) -> None:
        assert self._expected_auth is not None
        presented = b""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
        if not hmac.compare_digest(presented, self._expected_auth):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} changes state and needs metadata 'authorization: Bearer <token>' "
                "with the service's LATHE_AUTH_TOKEN",
            )


def _database_failure(exc: Exception) -> LatheError | None:
    # Imported here: clients import the kit (open_channel) and need not load asyncpg.
    from libs.db.errors import database_failure

    return database_failure(exc)


MAX_STATUS_MESSAGE_CHARS = 2048
"""Status messages travel in a trailer (gRPC's default limit on metadata is 8-16 KiB): a
message quoting a huge bad value would otherwise turn a clear INVALID_ARGUMENT into
RESOURCE_EXHAUSTED on the client."""


def status_message(text: str) -> str:
    """``text`` cut to ``MAX_STATUS_MESSAGE_CHARS``, saying so when it was cut."""
    if len(text) <= MAX_STATUS_MESSAGE_CHARS:
        return text
    return text[: MAX_STATUS_MESSAGE_CHARS - 40] + f"... ({len(text):,} characters in all)"


_DRAIN_S = 1.0
_DRAIN_MESSAGES = 256


async def _read_what_is_still_coming(exc: Exception, context: grpc.aio.ServicerContext) -> None:
    """Before refusing a request stream, read what the client is still sending.

    grpcio's asyncio client reports a status that arrives while it is still writing as
    INTERNAL "Internal error from Core" when one of its writes then fails (grpc/grpc#36066,
    open): a caller that sent a bad first message would see INTERNAL instead of why. A
    client that has finished sending gets the real status. Bounded (1 s, 256 messages, the
    call's deadline), so a large upload is not read in full only to be refused.
    """
    if isinstance(exc, grpc.aio.AbortError):
        return  # the status is out already
    remaining = context.time_remaining()
    budget = _DRAIN_S if remaining is None else min(_DRAIN_S, remaining)
    # context.read(), not the handler's iterator: a message that failed to decode ended
    # that generator, with the rest of the stream still unread.
    with contextlib.suppress(Exception):  # a broken or cut-off stream: nothing to wait for
        async with asyncio.timeout(budget):
            for _ in range(_DRAIN_MESSAGES):
                with contextlib.suppress(InvalidArgument):  # another undecodable message
                    if await context.read() is grpc.aio.EOF:
                        return


async def _abort_for(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    error = exc if isinstance(exc, LatheError) else _database_failure(exc)
    if error is not None:  # (an outage is logged once by the pool, not here per call)
        await context.abort(status_code_for(error), status_message(str(error)))
    if isinstance(exc, NotImplementedError):  # a generated servicer method not overridden
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
    span = trace.get_current_span()
    span.record_exception(exc)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    _log.exception("unexpected error in %s (trace %s)", method, trace_id)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method}; the platform's on-call can inspect it with "
        f"`lathe trace {trace_id}` and the service log",
    )
