"""A grpc.aio server with health checking, reflection and graceful shutdown.

The server listens (and answers health checks) before the service's servicers
exist: health is NOT_SERVING and RPCs answer UNAVAILABLE until ``bind`` is given
the servicers, built once Postgres and NATS are connected. On shutdown health
turns NOT_SERVING first, so load balancers stop routing, and in-flight calls
get a grace period to finish. A server that would accept connections from beyond
the machine without an auth token refuses to start unless told ``insecure`` (the
host passes ``LATHE_INSECURE``; the kit itself reads no settings).

Several processes may share one port (``reuse_port``: SO_REUSEPORT, the kernel spreads
connections over them) only when each asks for it; otherwise a second server on a
port in use fails to start, so two services configured with the same address do not
silently split each other's traffic. Processes that share a port also share their
health: each publishes its own readiness and liveness combined with its siblings'
(``set_siblings``, fed by ``libs.runtime.pod_health``), so a probe gets the pod's answer
whichever process the kernel hands its connection to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from libs.grpckit.interceptor import LatheServerInterceptor
from libs.grpckit.late_binding import LateBoundHandlers
from libs.grpckit.methods import aborting_handlers, mutating_methods

_log = logging.getLogger(__name__)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LIVENESS_SERVICE = "lathe.liveness"
"""Health name that is SERVING while the process runs and can make progress.

Liveness probes ask for it: restarting a process cannot fix a Postgres or NATS
outage, so it stays SERVING through one (readiness, the per-service names and "",
reflects Postgres). The host turns it NOT_SERVING (``set_live``) only for what a
restart can fix: the outbox relay stuck while Postgres and NATS both answer.
"""

Registration = Callable[[LateBoundHandlers], None]
"""Adds servicers, e.g. ``lambda s: add_ModelRegistryServicer_to_server(servicer, s)``."""


class GrpcServer:
    """One service's gRPC server and its health status."""

    def __init__(
        self,
        *,
        address: str,
        services: Sequence[ServiceDescriptor],
        auth_token: str | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        insecure: bool = False,
        reuse_port: bool = False,
    ) -> None:
        """``insecure``: serve a non-loopback ``address`` without ``auth_token`` anyway;
        otherwise ``start`` refuses to. ``reuse_port``: listen with SO_REUSEPORT, so that
        other processes listening the same way share the port."""
        self.address = address
        self._open_to_network = auth_token is None and not _is_loopback(address)
        self._insecure = insecure
        self._service_names = tuple(service.full_name for service in services)
        self._handlers = LateBoundHandlers()
        interceptor = LatheServerInterceptor(
            auth_token=auth_token,
            mutating=mutating_methods(*services),
            starting=aborting_handlers(
                tuple(services),
                grpc.StatusCode.UNAVAILABLE,
                "the service is starting (connecting to Postgres and NATS); retry shortly",
            ),
            is_ready=lambda: self._handlers.bound,
        )
        self.server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ],
        )
        self.server.add_generic_rpc_handlers((self._handlers,))
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (*self._service_names, _HEALTH_SERVICE, reflection.SERVICE_NAME), self.server
        )
        self.port: int | None = None
        self._parts: set[str] = set()
        self._ready = False
        """This process's own readiness, as ``set_serving`` last said."""
        self._live = True
        """This process's own liveness, as ``set_live`` last said."""
        self._siblings_ready = True  # no siblings: this process alone decides
        self._siblings_live = True
        self._published: tuple[bool, bool] | None = None
        """(readiness, liveness) as last published; None before ``start``."""
        self._publishing = asyncio.Lock()
        """The watchdog, the pod's beat and ``stop`` publish from separate tasks: one at a
        time, so that two changes cannot interleave their names' updates."""
        self._stopping = False

    async def start(self) -> int:
        """Listen (health NOT_SERVING until ``bind`` and ``set_serving``); returns the port."""
        self._refuse_open_network_without_consent()
        await self._publish()
        try:
            self.port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(
                f"could not listen on {self.address}: is another process using it? ({exc})"
            ) from exc
        await self.server.start()
        return self.port

    def bind(self, *registrations: Registration) -> None:
        """Attach the servicers; calls reach them from now on."""
        collector = LateBoundHandlers()
        for register in registrations:
            register(collector)
        self._handlers.add_generic_rpc_handlers([collector])

    @property
    def ready(self) -> bool:
        """This process's own readiness (what ``set_serving`` last said), siblings aside."""
        return self._ready

    @property
    def live(self) -> bool:
        """This process's own liveness (what ``set_live`` last said), siblings aside."""
        return self._live

    async def set_serving(self, serving: bool) -> None:
        """This process's own readiness (``""`` and the service names); published as
        SERVING only while the siblings sharing the port are ready too."""
        self._ready = serving
        await self._publish()

    async def set_parts(self, statuses: Mapping[str, bool]) -> None:
        """Health of named parts of a service (``<gRPC service>/<part>``: serving or not);
        every one turns NOT_SERVING when the server stops."""
        for name, serving in statuses.items():
            if not name.startswith(tuple(f"{service}/" for service in self._service_names)):
                raise ValueError(f"{name!r} is not a part of {self._service_names}")
            self._parts.add(name)
            await self._health.set(name, _SERVING if serving else _NOT_SERVING)

    async def set_live(self, live: bool) -> None:
        """Liveness (``LIVENESS_SERVICE``): False asks the orchestrator for a restart (of
        the whole pod when processes share the port: any one not live makes it so)."""
        self._live = live
        await self._publish()

    async def set_siblings(self, *, ready: bool, live: bool) -> None:
        """The combined health of the other processes sharing this port: readiness and
        liveness are published as this process's own AND theirs. Never called with one
        process, whose own health is what it publishes."""
        self._siblings_ready, self._siblings_live = ready, live
        await self._publish()

    async def stop(self, grace_s: float) -> None:
        """Stop accepting calls and let in-flight ones finish within ``grace_s``."""
        self._stopping = True  # from here on nothing turns SERVING again
        await self._publish()
        await self.set_parts(dict.fromkeys(self._parts, False))
        await self.server.stop(grace_s)

    def _refuse_open_network_without_consent(self) -> None:
        if not self._open_to_network:
            return
        if self._insecure:
            _log.warning(
                "serving %s without LATHE_AUTH_TOKEN (LATHE_INSECURE=1): anyone who can reach "
                "it can change state",
                self.address,
            )
            return
        raise RuntimeError(
            f"refusing to serve {self.address} without LATHE_AUTH_TOKEN: it is reachable "
            "beyond this machine, and anyone who can reach it could change state (register "
            "models, apply definitions). Set LATHE_AUTH_TOKEN, bind to 127.0.0.1, or set "
            "LATHE_INSECURE=1 to accept that explicitly"
        )

    async def _publish(self) -> None:
        """Set the health names whose combined status changed (Watch streams see changes
        only, and the pod's health is recomputed every 0.5 s)."""
        async with self._publishing:
            ready = self._ready and self._siblings_ready and not self._stopping
            live = self._live and self._siblings_live and not self._stopping
            was_ready, was_live = self._published or (None, None)
            self._published = (ready, live)
            if ready != was_ready:
                for name in ("", *self._service_names):
                    await self._health.set(name, _SERVING if ready else _NOT_SERVING)
            if live != was_live:
                await self._health.set(LIVENESS_SERVICE, _SERVING if live else _NOT_SERVING)


def _is_loopback(address: str) -> bool:
    """Whether ``address`` (host:port, [v6]:port or unix:path) is reachable only locally."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "" (all interfaces), a host name: assume reachable
        return False
