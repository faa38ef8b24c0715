"""The life of one service process, from start-up to graceful shutdown.

Start (``run_service``): telemetry, then ``ServiceHost.run``: the gRPC server
(health NOT_SERVING), then Postgres
(migrations applied), NATS (stream ensured), then the service's servicers, the
outbox relay and its background tasks; only then SERVING. SIGTERM or SIGINT:
NOT_SERVING, drain in-flight calls, stop background work, close.

While running, a watchdog keeps two signals apart:
- readiness (can this process serve requests?) follows Postgres alone. A NATS
  outage keeps it SERVING: writes still commit, their events wait in the outbox
  and are relayed once NATS is back. Reporting NOT_SERVING then would take every
  replica out of its load balancer for nothing.
- liveness (would a restart help?) turns NOT_SERVING when the outbox relay has
  made no progress for ``relay_stuck_after_s`` while Postgres and NATS both
  answered all along; never during an outage, which a restart cannot fix.
NATS and relay trouble are logged, and the relay exports its backlog as a gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence

from libs.config import LatheSettings
from libs.db import apply_migrations, connect_pool
from libs.eventstore import EventRelay, EventStore
from libs.grpckit import GrpcServer
from libs.messaging import EventStreamNames, connect_nats, ensure_stream
from libs.runtime.memory import return_large_buffers_to_os
from libs.runtime.spec import ServiceContext, ServiceSpec
from libs.telemetry import configure_telemetry

_log = logging.getLogger(__name__)
_WATCHDOG_INTERVAL_S = 2.0
RELAY_STUCK_AFTER_S = 60.0
"""Relay progress may pause this long, with Postgres and NATS up, before liveness fails."""


class ServiceHost:
    """Runs one service until it is asked to stop."""

    def __init__(
        self,
        spec: ServiceSpec,
        settings: LatheSettings,
        *,
        relay_stuck_after_s: float = RELAY_STUCK_AFTER_S,
        relay_ack_timeout_s: float = 5.0,
    ) -> None:
        self._spec = spec
        self._settings = settings
        self._relay_stuck_after_s = relay_stuck_after_s
        self._relay_ack_timeout_s = relay_ack_timeout_s
        self._stop = asyncio.Event()
        self.serving = asyncio.Event()
        """Set once the service reports SERVING (for embedding hosts, e.g. in tests)."""
        self.port: int | None = None
        self.relay: EventRelay | None = None
        """The outbox relay, once started (for embedding hosts, e.g. in tests)."""

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Serve until ``request_stop``; telemetry must already be configured."""
        spec, settings = self._spec, self._settings
        auth = settings.auth_token.get_secret_value() if settings.auth_token else None
        server = GrpcServer(
            address=settings.service_addr(spec.name), services=spec.services, auth_token=auth
        )
        port = self.port = await server.start()
        _log.info("%s listening on port %d (NOT_SERVING until ready)", spec.name.display_name, port)
        pool = await connect_pool(
            settings.require_database_url(), max_size=20, application_name=spec.name.display_name
        )
        nats_client = None
        tasks: list[asyncio.Task[None]] = []
        closers: Sequence[Callable[[], None]] = ()
        try:
            async with pool.acquire() as conn:
                await apply_migrations(
                    conn, spec.name.value, [*EventStore.migrations(), *spec.migrations]
                )
            nats_client = await connect_nats(
                settings.require_nats_url(), name=spec.name.display_name
            )
            js = nats_client.jetstream()
            streams = EventStreamNames(settings.namespace, spec.name.value)
            await ensure_stream(
                js,
                streams.stream,
                [streams.all_subjects],
                duplicate_window_s=settings.duplicate_window_s,
                replicas=settings.stream_replicas,
            )
            store = EventStore(pool, spec.name.value)
            context = ServiceContext(settings, pool, nats_client, js, store, streams)
            components = spec.build(context)
            closers = components.closers
            server.bind(*components.registrations)
            relay = EventRelay(
                store,
                js,
                streams,
                batch_size=settings.relay_batch_size,
                poll_interval_s=settings.relay_poll_interval_s,
                ack_timeout_s=self._relay_ack_timeout_s,
            )
            self.relay = relay
            for work in (relay.run, *components.background):
                tasks.append(asyncio.create_task(work(self._stop)))
            tasks.append(asyncio.create_task(self._watch_dependencies(context, server, relay)))
            await server.set_serving(True)
            self.serving.set()
            # Start-up objects live for the whole process: keep them out of every
            # future collection (a full one of this heap took ~20 ms).
            gc.freeze()
            _log.info("%s SERVING on port %d", spec.name.display_name, port)
            await self._stop.wait()
        finally:
            _log.info("%s shutting down", spec.name.display_name)
            self._stop.set()
            await server.stop(settings.shutdown_grace_s)
            for task in tasks:
                try:
                    await asyncio.wait_for(task, timeout=5)
                except asyncio.CancelledError:
                    pass
                except Exception:  # a task that failed or would not stop: shut down anyway
                    _log.exception("background task %s did not end cleanly", task.get_name())
            for close in closers:
                try:
                    close()
                except Exception:  # one failing closer must not keep the others from running
                    _log.exception("closing %s failed", close)
            if nats_client is not None:
                with contextlib.suppress(Exception):
                    await nats_client.drain()
            await pool.close()

    async def _watch_dependencies(
        self, context: ServiceContext, server: GrpcServer, relay: EventRelay
    ) -> None:
        """Readiness from Postgres; liveness from the relay (see the module docstring)."""
        name = self._spec.name.display_name
        ready = nats_up = live = True
        both_up_since: float | None = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _WATCHDOG_INTERVAL_S)
            if self._stop.is_set():
                return
            postgres_now = await _postgres_answers(context)
            nats_now = context.nats.is_connected
            if postgres_now != ready:
                ready = postgres_now
                state = "answers again: SERVING" if ready else "lost: NOT_SERVING"
                _log.warning("%s: Postgres %s", name, state)
                await server.set_serving(ready)
            if nats_now != nats_up:
                nats_up = nats_now
                if nats_up:
                    _log.warning("%s: NATS reachable again; the relay catches up", name)
                else:
                    _log.warning(
                        "%s: NATS unreachable; still SERVING, new events wait in the outbox "
                        "(relay backlog %s) until it is back",
                        name,
                        relay.backlog,
                    )
            now = time.monotonic()
            if not (postgres_now and nats_now):
                both_up_since = None
            elif both_up_since is None:
                both_up_since = now
            stalled_s = now - max(relay.healthy_at, both_up_since or now)
            if live == (stalled_s >= self._relay_stuck_after_s):
                live = not live
                if live:
                    _log.warning("%s: the event relay works again: liveness SERVING", name)
                else:
                    _log.error(
                        "%s: the event relay has made no progress for %.0fs while Postgres and "
                        "NATS answered (backlog %s): liveness NOT_SERVING, asking for a restart",
                        name,
                        stalled_s,
                        relay.backlog,
                    )
                await server.set_live(live)


async def _postgres_answers(context: ServiceContext) -> bool:
    try:
        async with asyncio.timeout(2):
            await context.pool.fetchval("SELECT 1")
    except Exception:
        return False
    return True


def run_service(spec: ServiceSpec) -> None:
    """Entry point of a service process: run until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return_large_buffers_to_os()
    settings = LatheSettings()
    telemetry = configure_telemetry(
        spec.name.display_name,
        traces_dir=settings.home / "traces",
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        sample_ratio=settings.trace_sample_ratio,
    )
    host = ServiceHost(spec, settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, host.request_stop)
        await host.run()

    try:
        asyncio.run(main())
    finally:
        telemetry.shutdown()
