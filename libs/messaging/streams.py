"""JetStream streams that carry Lathe events, created idempotently at start-up.

Each service publishes its events on ``<namespace>.<service>.<aggregate>.<event>``
into one stream named ``<NAMESPACE>_<SERVICE>``. The namespace is ``lathe`` in
production; tests use a unique one per run so runs never share a stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError


@dataclass(frozen=True)
class EventStreamNames:
    """Subject and stream names of one service's events."""

    namespace: str
    service: str

    @property
    def stream(self) -> str:
        return f"{self.namespace}_{self.service}".upper()

    @property
    def subject_prefix(self) -> str:
        return f"{self.namespace}.{self.service}"

    @property
    def all_subjects(self) -> str:
        return f"{self.subject_prefix}.>"

    def subject(self, subject_tail: str) -> str:
        """Full subject of an event whose tail is ``<aggregate>.<event>``."""
        return f"{self.subject_prefix}.{subject_tail}"


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    subjects: list[str],
    *,
    duplicate_window_s: float,
    replicas: int = 1,
) -> None:
    """Create the stream, or update it to this configuration if it exists."""
    config = StreamConfig(
        name=name,
        subjects=subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=duplicate_window_s,
        allow_direct=True,
        num_replicas=replicas,
    )
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(config)
    else:
        await js.update_stream(config)
