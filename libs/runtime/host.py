"""The life of one service process, from start-up to graceful shutdown.

Start (``run_service``): telemetry, then ``ServiceHost.run``: the gRPC server
(health NOT_SERVING), then Postgres
(migrations applied), NATS (stream ensured), then the service's servicers, the
outbox relay and its background tasks; only then SERVING (once the service's own
readiness check, if it has one, passes too). SIGTERM or SIGINT:
NOT_SERVING, drain in-flight calls, stop background work, close.

While running, a watchdog (``libs.runtime.watchdog``) keeps readiness (Postgres and
the service's own readiness check) apart from liveness (would a restart help: the
outbox relay stuck while Postgres and NATS answer). One of several processes sharing the
port (``libs.runtime.processes``) also publishes its siblings' health combined with its
own (``libs.runtime.pod_health``). Everything is configured by the one ``LatheSettings``
object the host is given; nothing below it reads the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from libs.config import LatheSettings
from libs.db import apply_migrations, connect_pool
from libs.eventstore import EventRelay, EventStore
from libs.grpckit import GrpcServer
from libs.messaging import EventStreamNames, connect_nats, ensure_stream
from libs.runtime.memory import return_large_buffers_to_os
from libs.runtime.pod_health import PodHealth, PodHealthFile
from libs.runtime.spec import ServiceContext, ServiceSpec
from libs.runtime.watchdog import Watchdog
from libs.telemetry import configure_telemetry

_log = logging.getLogger(__name__)


class ServiceHost:
    """Runs one service until it is asked to stop."""

    def __init__(
        self, spec: ServiceSpec, settings: LatheSettings, *, pod_health_file: Path | None = None
    ) -> None:
        """``pod_health_file``: with several processes sharing the port, the pod's health
        file (``libs.runtime.pod_health``); this process writes slot ``process_index``."""
        self._spec = spec
        self._settings = settings
        self._pod_health_file = pod_health_file
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        """Set once the servicers are bound and background work runs; health may still be
        NOT_SERVING while the service's readiness check fails (for embedding hosts)."""
        self.serving = asyncio.Event()
        """Set once the service first reports SERVING (for embedding hosts, e.g. in tests)."""
        self.port: int | None = None
        self.relay: EventRelay | None = None
        """The outbox relay, once started (for embedding hosts, e.g. in tests)."""

    def request_stop(self) -> None:
        self._stop.set()

    def _report_early_end(self, task: asyncio.Task[None]) -> None:
        """A background task that failed while the service runs is logged at once, not
        only at shutdown: on-call engineers must hear that its work stopped."""
        if self._stop.is_set() or task.cancelled() or task.exception() is None:
            return
        _log.error(
            "background task %s failed; its work stopped until the service restarts",
            task.get_name(),
            exc_info=task.exception(),
        )

    async def run(self) -> None:
        """Serve until ``request_stop``; telemetry must already be configured."""
        spec, settings = self._spec, self._settings
        auth = settings.auth_token.get_secret_value() if settings.auth_token else None
        server = GrpcServer(
            address=settings.service_addr(spec.name),
            services=spec.services,
            auth_token=auth,
            insecure=settings.insecure,
            reuse_port=spec.reuse_port,
        )
        port = self.port = await server.start()
        _log.info("%s listening on port %d (NOT_SERVING until ready)", spec.name.display_name, port)
        tasks: list[asyncio.Task[None]] = []
        if self._pod_health_file is not None:
            # From the first moment: siblings see this process as there but not ready yet.
            pod = PodHealth(
                name=spec.name.display_name,
                file=PodHealthFile(self._pod_health_file),
                index=settings.process_index,
                server=server,
            )
            tasks.append(asyncio.create_task(pod.run(self._stop), name="pod-health"))
        pool = await connect_pool(
            settings.require_database_url(),
            max_size=20,
            application_name=spec.name.display_name,
            command_timeout_s=settings.db_command_timeout_s,
            acquire_timeout_s=settings.db_acquire_timeout_s,
        )
        nats_client = None
        drained = asyncio.Event()
        """Set once in-flight calls have finished: the service's serving support stops."""
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
                ack_timeout_s=settings.relay_ack_timeout_s,
            )
            self.relay = relay
            for work in (relay.run, *components.background):
                tasks.append(asyncio.create_task(work(self._stop)))
            for work in components.serving_support:
                tasks.append(asyncio.create_task(work(drained)))
            for task in tasks:
                task.add_done_callback(self._report_early_end)
            watchdog = Watchdog(
                name=spec.name.display_name,
                server=server,
                pool=pool,
                nats=nats_client,
                relay=relay,
                readiness=components.readiness,
                relay_stuck_after_s=settings.relay_stuck_after_s,
                serving=self.serving,
                part_health=components.part_health,
                parts_of=spec.services[0].full_name if spec.services else "",
                ready_without_postgres=components.ready_without_postgres,
            )
            await watchdog.start()
            tasks.append(asyncio.create_task(watchdog.run(self._stop)))
            self.started.set()
            # Start-up objects live for the whole process: keep them out of every
            # future collection (a full one of this heap took ~20 ms).
            gc.freeze()
            if watchdog.ready:
                _log.info("%s SERVING on port %d", spec.name.display_name, port)
            await self._stop.wait()
        finally:
            _log.info("%s shutting down", spec.name.display_name)
            self._stop.set()
            await server.stop(settings.shutdown_grace_s)
            drained.set()
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


def run_service(
    spec: ServiceSpec,
    *,
    sibling_metrics: Mapping[str, str] | None = None,
    on_stop: Callable[[], None] | None = None,
    pod_health_file: Path | None = None,
) -> None:
    """Entry point of a service process: run until SIGTERM/SIGINT.

    ``sibling_metrics``: in the first of several processes of the service in one pod
    (``libs.runtime.processes``), the other processes' /metrics URLs by process index; its
    metrics port then serves them all. ``on_stop`` is called when the stop signal arrives
    (before draining), e.g. to pass it on to those processes. ``pod_health_file``: in
    each of those processes, the file through which their health is made pod-wide.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return_large_buffers_to_os()
    settings = LatheSettings()
    several = bool(sibling_metrics) or settings.process_index > 0
    telemetry = configure_telemetry(
        spec.name.display_name,
        traces_dir=settings.home / "traces",
        metrics_port=settings.metrics_port,
        metrics_host=settings.metrics_host,
        sample_ratio=settings.trace_sample_ratio,
        process_label=str(settings.process_index) if several else None,
        sibling_metrics=sibling_metrics,
    )
    host = ServiceHost(spec, settings, pod_health_file=pod_health_file)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stopping, host, on_stop)
        await host.run()

    try:
        asyncio.run(main())
    finally:
        telemetry.shutdown()


def _stopping(host: ServiceHost, on_stop: Callable[[], None] | None) -> None:
    if on_stop is not None:
        on_stop()
    host.request_stop()
