"""Client channels to Lathe services: traced, and carrying the caller's deadline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from libs.grpckit.deadlines import remaining_time_s

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Reconnect backoff 0.5 s growing to at most 2 s (gRPC's default grows to 120 s). These
    # channels are on request paths (inference -> feature store, -> registry), and a channel
    # in backoff fails every call at once with UNAVAILABLE even after its peer is back: with
    # the default, inference failed every Predict for 50 s after a 120 s feature-store outage
    # ended. A refused connect every 2 s per channel costs nothing; the +-20% jitter spreads
    # replicas' reconnects. (min_reconnect_backoff_ms, the connect timeout, stays 20 s.)
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
"""Options of every long-lived channel from one Lathe service to another; ``open_channel``
sets them, and a channel built without the kit (``services/inference/store/features.py``)
passes them itself."""


def _with_inherited_deadline(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    remaining = remaining_time_s()
    if details.timeout is not None or remaining is None:
        return details
    return grpc.aio.ClientCallDetails(
        details.method, remaining, details.metadata, details.credentials, details.wait_for_ready
    )


class _DeadlineUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_inherited_deadline(details), request)


class _DeadlineUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_inherited_deadline(details), request)


class _DeadlineStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_inherited_deadline(details), requests)


class _DeadlineStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return await continuation(_with_inherited_deadline(details), requests)


def open_channel(
    address: str, *, traced: bool = True, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An insecure channel to ``address`` (inside the cluster network) with Lathe's interceptors."""
    interceptors: list[grpc.aio.ClientInterceptor] = [
        _DeadlineUnaryUnary(),
        _DeadlineUnaryStream(),
        _DeadlineStreamUnary(),
        _DeadlineStreamStream(),
    ]
    if traced:
        interceptors.extend(aio_client_interceptors())
    return grpc.aio.insecure_channel(
        address,
        interceptors=interceptors,
        options=[*CHANNEL_OPTIONS, *options],
    )
