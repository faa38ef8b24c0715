"""The gRPC service kit: server, interceptors, errors, deadlines, auth, validation."""

from libs.grpckit.client import open_channel
from libs.grpckit.deadlines import remaining_time_s
from libs.grpckit.encoded import Encoded
from libs.grpckit.errors import status_code_for
from libs.grpckit.interceptor import LatheServerInterceptor
from libs.grpckit.methods import AbortingService, mutating_methods
from libs.grpckit.server import GrpcServer

__all__ = [
    "AbortingService",
    "Encoded",
    "GrpcServer",
    "LatheServerInterceptor",
    "mutating_methods",
    "open_channel",
    "remaining_time_s",
    "status_code_for",
]
