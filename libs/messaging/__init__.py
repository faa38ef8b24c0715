"""NATS JetStream plumbing: connections, event streams and their subjects."""

from libs.messaging.connection import connect_nats
from libs.messaging.streams import EventStreamNames, ensure_stream

__all__ = ["EventStreamNames", "connect_nats", "ensure_stream"]
