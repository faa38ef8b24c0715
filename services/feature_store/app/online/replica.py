"""Every online row held in this process's memory, following Postgres exactly.

An online read of 100 entities x 5 views is 500 index probes: ~5 ms of Postgres
time on the reference machine, more than the whole latency budget. Each serving
replica therefore loads the online table once and then applies its change feed
(``store.online.read_changes``): woken by the NOTIFY every upsert sends, polling
every ``poll_interval_s`` in case one is lost. Reads are dictionary lookups, and
feature services read entries kept ready per entity from these rows
(``vectors.py``).

Until the first load completes, or when the table outgrows ``max_rows``, the
replica reports itself unavailable and reads go to Postgres, so serving is
always correct, only slower. Online rows are never deleted, so the feed carries
no tombstones; a feature that starts deleting them must add them (ADR 0009).
Rows of the future (ADR 0019) arrive through the same feed and join the entity's
chain (``domain/serving/rows.py``); the pass that later deletes them from Postgres
needs no tombstone either, since a row whose time has come is folded into the
entity's current row here too.

A row the replica cannot hold (it should not exist: times come back through
``domain.times.utc``) is logged and skipped, and any other failure of the follow
loop is logged and retried from the horizon: the task never ends while the process
serves, and one bad row never stops the others from being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
from opentelemetry import metrics

from services.feature_store.app.online.vectors import VectorIndexes
from services.feature_store.domain.serving.rows import ServingRow, ViewTables, merged
from services.feature_store.domain.times import to_us
from services.feature_store.store import online

_log = logging.getLogger(__name__)
_meter = metrics.get_meter(__name__)
# For on-call: is this process serving online reads from memory, and how much it holds.
_available = _meter.create_up_down_counter(
    "lathe.feature_store.online_replica.available",
    description="1 while online reads are served from this process's replica, else 0",
)
_held = _meter.create_up_down_counter(
    "lathe.feature_store.online_replica.rows", unit="{row}", description="Online rows held"
)
_applied = _meter.create_counter(
    "lathe.feature_store.online_replica.rows_applied",
    unit="{row}",
    description="Changed online rows applied from Postgres (the first load included)",
)
_RETRY_S = 1.0
_CATCH_UP_TIMEOUT_S = 5.0


class OnlineReplica:
    def __init__(self, pool: asyncpg.Pool, *, max_rows: int, poll_interval_s: float = 1.0) -> None:
        self._pool = pool
        self._max_rows = max_rows
        self._poll_interval_s = poll_interval_s
        self._tables: ViewTables = {}
        self._rows = 0
        self._horizon = 0
        self._available = False
        self._following = False
        """Between start and turning off (a write during the first load waits for it)."""
        self._wake = asyncio.Event()
        self._requested = 0
        self._applied = 0
        self._progress = asyncio.Condition()
        self.vectors = VectorIndexes(lambda: self.tables, max_entries=max_rows)
        """Feature services' reply entries per entity, derived from these rows."""

    @property
    def tables(self) -> ViewTables | None:
        """The rows to serve from, or None: read Postgres instead."""
        return self._tables if self._available else None

    @property
    def rows(self) -> int:
        return self._rows

    async def catch_up(self) -> None:
        """Return once this replica serves every transaction committed before the call.

        Writers in this process call it after committing, so their RPC returns only
        when a read here sees what they wrote. Other processes' writes arrive within
        milliseconds through NOTIFY.
        """
        if not self._following:
            return  # reads go to Postgres, which already has it
        self._requested += 1
        target = self._requested
        self._wake.set()
        try:
            async with asyncio.timeout(_CATCH_UP_TIMEOUT_S), self._progress:
                await self._progress.wait_for(lambda: self._applied >= target)
        except TimeoutError:
            _log.warning(
                "the online replica did not catch up within %.0f s (is Postgres reachable?)",
                _CATCH_UP_TIMEOUT_S,
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Background task: load, then follow changes until ``stop``."""
        if self._max_rows <= 0:
            _log.info("online replica off (max rows 0): online reads go to Postgres")
            return
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: self._wake.set())
        self._following = True
        try:
            while not stop.is_set() and self._max_rows > 0:
                try:
                    await self._follow(stop)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    # Keep serving what is held (TTL still applies); resume from the
                    # horizon, which loses nothing.
                    _log.warning(
                        "online replica interrupted (%r); resuming in %.0fs", exc, _RETRY_S
                    )
                except Exception:  # a bug, not an outage: say so loudly, and keep serving
                    _log.exception("online replica failed; resuming in %.0fs", _RETRY_S)
                else:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RETRY_S)
        finally:
            self._following = False
            stopping.cancel()
            self.vectors.clear()  # cancels fills still running: nothing outlives the replica
            async with self._progress:  # release writers waiting on a replica that stopped
                self._applied = self._requested
                self._progress.notify_all()

    async def _follow(self, stop: asyncio.Event) -> None:
        def on_notify(*_: object) -> None:
            self._wake.set()

        async with self._pool.acquire() as conn:
            await conn.add_listener(online.CHANGES_CHANNEL, on_notify)
            try:
                while not stop.is_set():
                    self._wake.clear()
                    goal = self._requested
                    self._horizon = await online.read_changes(conn, self._horizon, self._apply)
                    if self._rows > self._max_rows:
                        self._turn_off()
                        return  # run() ends: nothing left to follow
                    if not self._available:
                        self._available = True
                        _available.add(1)
                        # The loaded rows live as long as the process: keep them out of
                        # every future collection (as the host does with start-up objects;
                        # 500k rows made gen-1/2 pauses of 2-90 ms land on reads).
                        gc.freeze()
                        _log.info("online replica holds %d rows; serving from memory", self._rows)
                    async with self._progress:
                        self._applied = goal
                        self._progress.notify_all()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval_s)
            finally:
                with contextlib.suppress(Exception):
                    await conn.remove_listener(online.CHANGES_CHANNEL, on_notify)

    def _apply(self, records: Sequence[asyncpg.Record]) -> None:
        # Runs on the event loop between cursor fetches: ~5 µs a row, so a batch of 500
        # holds concurrent reads back ~2.5 ms at most.
        before = self._rows
        invalidate = self.vectors.invalidate
        now_us = to_us(datetime.now(UTC))
        skipped = 0
        for view, version, key, row, event_time, created_time, features in records:
            try:
                new = ServingRow(row, event_time, features, created_time)
            except Exception:  # log it and keep the rest: one row must not stop serving
                if not skipped:
                    _log.exception(
                        "online replica skipped the row of %s v%s %r", view, version, key
                    )
                skipped += 1
                continue
            table = self._tables.get((view, version))
            if table is None:
                table = self._tables[(view, version)] = {}
            held = table.get(key)
            if held is None:
                self._rows += 1
                table[key] = new
            else:
                table[key] = merged(held, new, now_us)
            invalidate((view, version), key)
        if skipped > 1:
            _log.error("online replica skipped %d rows it could not hold in one batch", skipped)
        _applied.add(len(records) - skipped)
        _held.add(self._rows - before)

    def _turn_off(self) -> None:
        _log.warning(
            "online replica off: %d online rows exceed its limit of %d; online reads go to "
            "Postgres (raise LATHE_FEATURE_STORE_REPLICA_MAX_ROWS if this process has memory)",
            self._rows,
            self._max_rows,
        )
        if self._available:
            _available.add(-1)
        _held.add(-self._rows)
        self._available = False
        self._following = False
        self._max_rows = 0
        self._tables = {}
        self.vectors.clear()
        self._rows = 0
