"""This process's upload lease, and deleting the partial uploads of processes that died.

Uploads stream into ``incoming/<owner>/`` of the artifact root, the owner being this
process. While it lives, the process renews a lease in Postgres every third of its length
(``LATHE_MODEL_REGISTRY_UPLOAD_LEASE_S``, default 60 s). A process killed mid-upload stops
renewing; once its lease has lapsed, every registry process sharing the root (a restarted
one at start-up included, and each live one every third of a lease) deletes that owner's
directory. A live upload is never touched: its owner's lease is current. The clock is
Postgres's, so hosts with skewed clocks judge alike (ADR 0006).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import timedelta

from libs.errors import Unavailable
from services.model_registry.store.artifacts import ArtifactStore
from services.model_registry.store.upload_leases import UploadLeases

_log = logging.getLogger(__name__)
_KEEP_LAPSED_ROWS = timedelta(hours=1)


class UploadLease:
    """Holds this process's lease while it runs (a background task) and sweeps dead ones."""

    def __init__(
        self, store: ArtifactStore, leases: UploadLeases, *, owner: str, lease_s: float
    ) -> None:
        self._store = store
        self._leases = leases
        self.owner = owner
        self._lease = timedelta(seconds=lease_s)
        self._held = asyncio.Event()
        self._failing = False

    async def held(self) -> None:
        """Wait until the lease is held (an upload must not start before: a directory with
        no lease looks dead to the others)."""
        try:
            await asyncio.wait_for(self._held.wait(), self._lease.total_seconds())
        except TimeoutError:
            raise Unavailable(
                "the registry could not take its upload lease in Postgres yet; retry shortly"
            ) from None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._round()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._lease.total_seconds() / 3)
        # Not released on stop: uploads still draining keep it until it lapses.

    async def _round(self) -> None:
        try:
            await self._leases.renew(
                self.owner, host=socket.gethostname(), pid=os.getpid(), lease=self._lease
            )
            self._held.set()
            deleted = await sweep_dead_uploads(self._store, self._leases, self.owner)
        except Exception as exc:  # Postgres away: retry next round; uploads go on meanwhile
            if not self._failing:
                _log.warning("could not renew the upload lease (%r); retrying", exc)
            self._failing = True
        else:
            if self._failing:
                _log.info("upload lease renewed again")
            self._failing = False
            if deleted:
                _log.info("deleted %d partial upload(s) of registry processes that died", deleted)


async def sweep_dead_uploads(store: ArtifactStore, leases: UploadLeases, own: str) -> int:
    """Delete the partial uploads of every owner but ``own`` whose lease lapsed; how many."""
    others = [owner for owner in await store.partial_upload_owners() if owner != own]
    dead = set(others) - await leases.live(others) if others else set()
    deleted = 0
    for owner in sorted(dead):
        deleted += await store.delete_partial_uploads_of(owner)
    if dead:
        await leases.forget(sorted(dead))
    await leases.forget_lapsed(_KEEP_LAPSED_ROWS)
    return deleted
