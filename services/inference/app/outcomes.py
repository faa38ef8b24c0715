"""How this process's handling of deployment requests ended, until it is recorded.

The loader decides an outcome (activated, or failed at a stage) in memory at once; the
event that records it is written when Postgres takes it. An outcome Postgres could not
take (an outage, a lost connection) waits here and is retried on the loader's next polls,
without loading anything again, until it is recorded or the alias moved past it (then it
is no longer news: ``domain.deployment.decide_outcome``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from lathe.inference.v1 import events_pb2 as ev
from libs.errors import Unavailable
from libs.eventstore import EventMetadata
from services.inference.app.deployments import DeploymentRecorder

_log = logging.getLogger(__name__)
_NOT_RECORDED = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, Unavailable)
"""Postgres errors, a lost connection: an outcome recorded later, not lost."""

Key = tuple[str, str]
"""(model, alias)."""
Outcome = ev.DeploymentActivated | ev.DeploymentFailed


@dataclass(frozen=True)
class _Pending:
    revision: int
    """The request revision it answers."""
    event: Outcome


class PendingOutcomes:
    """At most one outcome per alias waits (a newer one replaces it)."""

    def __init__(self, recorder: DeploymentRecorder) -> None:
        self._recorder = recorder
        self._pending: dict[Key, _Pending] = {}
        self._recording: set[Key] = set()

    def decided(self, key: Key, revision: int, event: Outcome) -> None:
        self._pending[key] = _Pending(revision, event)

    def due(self, key: Key, revision: int) -> bool:
        """Whether ``key`` has an outcome to record now, the alias's request revision
        being ``revision`` (one it moved past is dropped)."""
        pending = self._pending.get(key)
        if pending is None or key in self._recording:
            return False
        if pending.revision != revision:
            del self._pending[key]
            return False
        return True

    async def record(self, key: Key) -> None:
        """Record ``key``'s outcome; kept for a later try when Postgres cannot take it."""
        pending = self._pending.get(key)
        if pending is None or key in self._recording:
            return
        self._recording.add(key)
        try:
            await self._recorder.record_outcome(
                *key, pending.revision, pending.event, EventMetadata(actor="inference")
            )
        except _NOT_RECORDED as exc:
            _log.warning(
                "%s/%s: could not record the outcome of revision %d (%s); retrying",
                *key,
                pending.revision,
                exc,
            )
            return
        finally:
            self._recording.discard(key)
        if self._pending.get(key) is pending:  # recorded, or no longer news: done either way
            del self._pending[key]
