"""OpenTelemetry for Lathe: one trace across gRPC, Postgres, NATS and model execution."""

from libs.telemetry.propagation import (
    context_from_traceparent,
    current_traceparent,
    extract_context,
    inject_context,
)
from libs.telemetry.setup import Telemetry, configure_telemetry

__all__ = [
    "Telemetry",
    "configure_telemetry",
    "context_from_traceparent",
    "current_traceparent",
    "extract_context",
    "inject_context",
]
