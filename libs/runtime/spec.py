"""What a service declares to the host, and what the host hands back to it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
from google.protobuf.descriptor import ServiceDescriptor
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from libs.config import LatheSettings, ServiceName
from libs.db import Migration
from libs.eventstore import EventCatalog, EventStore
from libs.grpckit.server import Registration
from libs.messaging import EventStreamNames

BackgroundTask = Callable[[asyncio.Event], Awaitable[None]]
"""Runs until the event is set (consumers, schedulers, a batcher)."""

ReadinessCheck = Callable[[], str | None]
"""Whether a service can serve, beyond Postgres: None if it can, else why not (one line).

Called by the host on its event loop: once before the service would first turn SERVING,
then every watchdog round (2 s). It must be cheap and must not block: read state the
service keeps in memory (e.g. "every production deployment is loaded and warm"), which
its own background tasks update. Work that needs I/O to find out belongs in such a task.
"""

PartHealth = Callable[[], Mapping[str, bool]]
"""The health of parts of a service that clients ask about by name (inference: each model
and alias it follows): part -> whether it can serve. The host publishes each as the
standard health service's ``<gRPC service>/<part>`` and turns a part that is no longer
listed NOT_SERVING. Called like ``ReadinessCheck``: on the event loop, every watchdog
round, so it must be cheap and read only what the service keeps in memory."""


@dataclass(frozen=True)
class ServiceContext:
    """The connected dependencies a service builds its servicers from."""

    settings: LatheSettings
    pool: asyncpg.Pool
    nats: NatsClient
    js: JetStreamContext
    store: EventStore
    """This service's own event store (its Postgres schema)."""
    streams: EventStreamNames
    """Names of this service's JetStream stream and subjects."""


@dataclass(frozen=True)
class ServiceComponents:
    """What a service plugs into its host once dependencies are connected."""

    registrations: Sequence[Registration]
    background: Sequence[BackgroundTask] = field(default_factory=tuple)
    """Stopped at the stop signal: nothing new starts while calls drain (no job is
    scheduled, no model loaded only to be dropped)."""
    serving_support: Sequence[BackgroundTask] = field(default_factory=tuple)
    """Work that calls in flight rely on (a batcher, a client of another service, the
    writer of what calls log): stopped only once the calls drained, or the grace period
    ran out, so that a stopping service still answers the calls it holds."""
    closers: Sequence[Callable[[], None]] = field(default_factory=tuple)
    """Run once RPCs have drained and background tasks ended (e.g. flush a local file)."""
    readiness: ReadinessCheck | None = None
    """The service's own readiness, combined with Postgres's for its health (readiness
    probes): SERVING only while both say so. None: Postgres alone decides. RPCs are
    answered either way; only the health status (and so a load balancer) follows it."""
    part_health: PartHealth | None = None
    """Per-part health under the service's name (e.g. ``…Inference/credit-default``)."""
    ready_without_postgres: bool = False
    """Readiness ignores Postgres (only ``readiness`` decides): for a service that answers
    its calls from memory through an outage (inference scores loaded models and buffers
    its logs), where taking every replica out of rotation would turn a database blip into
    an outage of the calls. Liveness and the logs still report the outage."""


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the host needs to know to run a service."""

    name: ServiceName
    services: tuple[ServiceDescriptor, ...]
    """The gRPC services it exposes (health, reflection, auth rules come from these)."""
    catalog: EventCatalog
    """The events it records."""
    migrations: tuple[Migration, ...]
    """Its own schema migrations (the event store's are applied before them)."""
    build: Callable[[ServiceContext], ServiceComponents]
    """Builds the servicers and background work once Postgres and NATS are connected."""
    reuse_port: bool = False
    """Listen with SO_REUSEPORT, so that several processes of this service share its port
    (the kernel spreads connections over them). Off: a second process on the port fails."""
