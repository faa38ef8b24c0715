"""A running service's health: readiness and liveness from what the process observes.

Two signals, kept apart because they ask for different remedies (ADR 0013):
- readiness (``""`` and the service's names: may a load balancer send it requests?) is
  SERVING while Postgres answers and the service's own readiness check, if it has one
  (``ServiceComponents.readiness``, e.g. inference until its production deployments are
  warm), passes. A NATS outage keeps it SERVING: writes still commit, their events wait
  in the outbox and are relayed once NATS is back. Reporting NOT_SERVING then would take
  every replica out of its load balancer for nothing.
- liveness (``lathe.liveness``: would a restart help?) turns NOT_SERVING when the outbox
  relay has made no progress for ``relay_stuck_after_s`` while Postgres and NATS both
  answered all along; never during an outage, which a restart cannot fix.

Parts of a service that clients ask about by name (``ServiceComponents.part_health``,
e.g. inference's models) are published beside them as ``<gRPC service>/<part>``.

Every change is logged once, when it happens, with its reason; nothing is logged while
a state lasts. The checks run every 2 s (``WATCHDOG_INTERVAL_S``).

What it sets is this process's own health. When several processes share the port
(``libs.runtime.processes``), the server publishes it combined with theirs
(``libs.runtime.pod_health``): a probe reaches any one of them and must get the pod's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from nats.aio.client import Client as NatsClient

from libs.eventstore import EventRelay
from libs.grpckit import GrpcServer
from libs.runtime.spec import PartHealth, ReadinessCheck

_log = logging.getLogger(__name__)
WATCHDOG_INTERVAL_S = 2.0
"""How often Postgres, NATS, the relay and the service's readiness check are looked at."""


class Watchdog:
    """Keeps one server's health statuses true to Postgres, the service, NATS and the relay."""

    def __init__(
        self,
        *,
        name: str,
        server: GrpcServer,
        pool: asyncpg.Pool,
        nats: NatsClient,
        relay: EventRelay,
        readiness: ReadinessCheck | None,
        relay_stuck_after_s: float,
        serving: asyncio.Event,
        part_health: PartHealth | None = None,
        parts_of: str = "",
        ready_without_postgres: bool = False,
    ) -> None:
        """``serving`` is set once readiness first turns SERVING; ``part_health``'s parts are
        published as ``<parts_of>/<part>``."""
        self._name = name
        self._server = server
        self._pool = pool
        self._nats = nats
        self._relay = relay
        self._readiness = readiness
        self._ready_without_postgres = ready_without_postgres
        self._relay_stuck_after_s = relay_stuck_after_s
        self.serving = serving
        self._postgres_up = True  # it answered the migrations just now
        self._not_ready_because: str | None = None
        self._check_raised = False
        self._ready = False
        self._nats_up = True
        self._live = True
        self._both_up_since: float | None = time.monotonic()
        self._part_health = part_health
        self._parts_of = parts_of
        self._parts: dict[str, bool] = {}
        """Each part's status as last published (full health name)."""
        self._parts_raised = False

    @property
    def ready(self) -> bool:
        """Whether readiness is SERVING now."""
        return self._ready

    async def start(self) -> None:
        """Report SERVING now if the service says it is ready (Postgres just answered)."""
        self._not_ready_because = self._ask_the_service()
        if self._not_ready_because is not None:
            _log.info(
                "%s: not ready yet (%s): NOT_SERVING until it is",
                self._name,
                self._not_ready_because,
            )
        await self._publish()
        await self._check_parts(None)

    async def run(self, stop: asyncio.Event) -> None:
        """Check every ``WATCHDOG_INTERVAL_S`` until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCHDOG_INTERVAL_S)
            if stop.is_set():
                return
            await self.check(stop)

    async def check(self, stop: asyncio.Event | None = None) -> None:
        """One round: readiness, parts, NATS, liveness."""
        await self._check_readiness(stop)
        await self._check_parts(stop)
        self._check_nats()
        await self._check_liveness(stop)

    async def _check_parts(self, stop: asyncio.Event | None) -> None:
        """Publish the parts whose health changed; a part no longer listed turns NOT_SERVING."""
        if self._part_health is None or (stop is not None and stop.is_set()):
            return
        try:
            listed = self._part_health()
        except Exception:  # a broken check must not stop the watchdog; parts stay as they are
            if not self._parts_raised:
                _log.exception("%s: the service's part health check failed", self._name)
            self._parts_raised = True
            return
        self._parts_raised = False
        now = {f"{self._parts_of}/{part}": serving for part, serving in listed.items()}
        now.update({name: False for name in self._parts if name not in now})
        changed = {
            name: serving for name, serving in now.items() if self._parts.get(name) != serving
        }
        if not changed:
            return
        await self._server.set_parts(changed)
        self._parts.update(changed)
        for name, serving in changed.items():
            _log.info("%s: %s %s", self._name, name, "SERVING" if serving else "NOT_SERVING")

    async def _check_readiness(self, stop: asyncio.Event | None) -> None:
        postgres_now = await _postgres_answers(self._pool)
        because = self._ask_the_service()
        serving_after = (postgres_now or self._ready_without_postgres) and because is None
        if postgres_now != self._postgres_up:
            self._postgres_up = postgres_now
            state = "answers again" if postgres_now else "lost"
            outcome = "SERVING" if serving_after else "NOT_SERVING"
            if postgres_now and not serving_after:
                outcome += f" (the service is not ready: {because})"
            _log.warning("%s: Postgres %s: %s", self._name, state, outcome)
        if (because is None) != (self._not_ready_because is None):
            if because is None:
                outcome = "SERVING" if serving_after else "NOT_SERVING while Postgres is lost"
                _log.info("%s: the service reports ready: %s", self._name, outcome)
            else:
                log = _log.warning if self._ready or self.serving.is_set() else _log.info
                log("%s: the service reports not ready (%s): NOT_SERVING", self._name, because)
        self._not_ready_because = because
        if stop is None or not stop.is_set():  # shutting down: the server says NOT_SERVING
            await self._publish()

    def _ask_the_service(self) -> str | None:
        """None when the service's own check passes (or it has none), else why not."""
        if self._readiness is None:
            return None
        try:
            because = self._readiness()
        except Exception as exc:  # a broken check must not stop the watchdog
            if not self._check_raised:
                _log.exception("%s: the service's readiness check failed", self._name)
            self._check_raised = True
            return f"its readiness check raised {type(exc).__name__}: {exc}"
        self._check_raised = False
        if because is None:
            return None
        return str(because) or "its readiness check gave no reason"

    async def _publish(self) -> None:
        postgres_ok = self._postgres_up or self._ready_without_postgres
        ready = postgres_ok and self._not_ready_because is None
        if ready != self._ready:
            self._ready = ready
            await self._server.set_serving(ready)
        if ready:
            self.serving.set()

    def _check_nats(self) -> None:
        nats_now = self._nats.is_connected
        if nats_now == self._nats_up:
            return
        self._nats_up = nats_now
        if nats_now:
            _log.warning("%s: NATS reachable again; the relay catches up", self._name)
        else:
            _log.warning(
                "%s: NATS unreachable; still SERVING, new events wait in the outbox "
                "(relay backlog %s) until it is back",
                self._name,
                self._relay.backlog,
            )

    async def _check_liveness(self, stop: asyncio.Event | None) -> None:
        now = time.monotonic()
        if not (self._postgres_up and self._nats_up):
            self._both_up_since = None
        elif self._both_up_since is None:
            self._both_up_since = now
        stalled_s = now - max(self._relay.healthy_at, self._both_up_since or now)
        if self._live != (stalled_s >= self._relay_stuck_after_s):
            return
        self._live = not self._live
        if self._live:
            _log.warning("%s: the event relay works again: liveness SERVING", self._name)
        else:
            _log.error(
                "%s: the event relay has made no progress for %.0fs while Postgres and "
                "NATS answered (backlog %s): liveness NOT_SERVING, asking for a restart",
                self._name,
                stalled_s,
                self._relay.backlog,
            )
        if stop is None or not stop.is_set():
            await self._server.set_live(self._live)


async def _postgres_answers(pool: asyncpg.Pool) -> bool:
    try:
        async with asyncio.timeout(2):
            await pool.fetchval("SELECT 1")
    except Exception:
        return False
    return True
