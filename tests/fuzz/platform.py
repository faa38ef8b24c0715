"""The four services, booted for fuzzing, and the loop that fuzzes one RPC.

The services run in the test process (``ServiceHost``, as the other tests do) on
real Postgres and NATS, in a database and JetStream namespace of their own, with an
auth token (sent on every call, so mutations get past auth and are really tried).
Each call is made alone: fingerprint the service's tables, call with a 5 s deadline,
fingerprint again, ask health; ``oracle.judge`` then says what went wrong, if anything.

Hypothesis drives the calls from a worker thread (its ``@given`` is synchronous)
while the services and the client channels live on the test's event loop; each
example hands its call to the loop and waits for the outcome.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from libs.config import ServiceName
from libs.grpckit.server import LIVENESS_SERVICE
from tests.fuzz.descriptor_strategies import Hints
from tests.fuzz.findings import Findings, finding_type
from tests.fuzz.harvest import harvest
from tests.fuzz.oracle import Fingerprint, Outcome, changed_tables, fingerprint, judge
from tests.fuzz.server_log import ErrorLog
from tests.fuzz.targets import Body, FuzzTarget, call

CALL_DEADLINE_S = 5.0
"""Every fuzzed call's deadline: one that runs out is a finding (the server hung)."""
ACTOR = "fuzzer"


def examples_per_method() -> int:
    """``LATHE_FUZZ_EXAMPLES`` (default 50): random requests per RPC; raise it locally.

    The garbage-bytes test sends a third as many, the sweep up to eight times as many."""
    return int(os.environ.get("LATHE_FUZZ_EXAMPLES", "50"))


def fixed_seed() -> int | None:
    """``LATHE_FUZZ_SEED``: explore other inputs than the default, derandomized ones."""
    value = os.environ.get("LATHE_FUZZ_SEED")
    return int(value) if value else None


@dataclass
class FuzzPlatform:
    """The hosted services, a client channel to each, and what the fuzz knows so far."""

    pool: asyncpg.Pool
    """On the fuzz database, for the write fingerprints."""
    channels: dict[ServiceName, grpc.aio.Channel]
    token: str
    targets: Sequence[FuzzTarget]
    errors: ErrorLog
    """ERROR records of the in-process services (installed on the root logger)."""
    addresses: dict[ServiceName, str] = field(default_factory=dict)
    """Where each service listens (for clients of the corpus's own, e.g. the test helpers')."""
    settlers: dict[ServiceName, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    """Per service: wait until what a call wrote off its response path is written (a
    call's own writes are then all in before its write fingerprint is taken)."""
    preparers: dict[ServiceName, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    """Per service: put back what the corpus set up (another RPC's fuzz may have moved
    it) before the fuzz of one of its RPCs starts."""
    at_rest: dict[str, Fingerprint] = field(default_factory=dict)
    """Per schema, its fingerprint after the last fuzzed call (what "nothing happened
    since" looks like)."""
    findings: Findings = field(default_factory=Findings)
    seeds: dict[str, list[tuple[Message, ...]]] = field(default_factory=dict)
    """Valid requests (each a tuple: client-streaming calls send several) by RPC path."""
    calls: int = 0
    """Fuzzed calls made so far (with ``call_seconds``: where a run's time goes)."""
    call_seconds: float = 0.0
    tally: dict[str, Counter[str]] = field(default_factory=dict)
    """Per RPC (``<service>.<Method>``), fuzzed calls by status code."""
    slowest: dict[str, float] = field(default_factory=dict)
    """Per RPC, its slowest fuzzed call in seconds (shown, never judged: no timing rule)."""
    _by_field: dict[str, list[object]] = field(default_factory=dict)
    _by_type: dict[str, list[Message]] = field(default_factory=dict)

    def metadata(self, actor: str = ACTOR, request_id: str = "") -> list[tuple[str, str]]:
        """Auth, actor, and a request id (events record it as their correlation id)."""
        return [
            ("authorization", f"Bearer {self.token}"),
            ("lathe-actor", actor),
            ("x-request-id", request_id or f"fuzz-{uuid.uuid4().hex}"),
        ]

    def target(self, service: ServiceName, method: str) -> FuzzTarget:
        for target in self.targets:
            if target.service == service and target.method.name == method:
                return target
        raise LookupError(f"{service.display_name} has no RPC {method}; was it renamed?")

    @property
    def hints(self) -> Hints:
        return Hints(
            by_field={k: tuple(v) for k, v in self._by_field.items()},
            by_type={k: tuple(v) for k, v in self._by_type.items()},
        )

    # -- seeding ----------------------------------------------------------------------

    async def seed(
        self,
        service: ServiceName,
        method: str,
        *bodies: Message,
        actor: str = ACTOR,
        must_succeed: bool = True,
    ) -> list[Message]:
        """Make a valid call, keep it as a seed for mutation, harvest its values; replies.

        ``must_succeed=False`` keeps a request that is valid by the contract but that
        today's code may still get wrong (it is fuzzed like the others either way).
        """
        target = self.target(service, method)
        try:
            raw = await call(
                self.channels[service],
                target,
                bodies,
                metadata=self.metadata(actor),
                timeout_s=30,
            )
        except grpc.aio.AioRpcError as error:
            if must_succeed:
                raise AssertionError(
                    f"the fuzz corpus's valid {target} call failed ({error.code().name}: "
                    f"{error.details()}); update tests/fuzz/corpus.py to today's contract"
                ) from None
            raw = []
        replies = [target.response_type.FromString(r) for r in raw]
        self.seeds.setdefault(target.path, []).append(tuple(bodies))
        harvest([*bodies, *replies], self._by_field, self._by_type)
        return replies

    def plausible(self, field_name: str, *values: object) -> None:
        """Offer ``values`` for every field called ``field_name`` (e.g. odd column names)."""
        self._by_field.setdefault(field_name, []).extend(values)

    # -- one fuzzed call --------------------------------------------------------------

    async def exchange(self, target: FuzzTarget, bodies: tuple[Body, ...]) -> Outcome:
        started = time.perf_counter()
        schema = target.service.value
        events = f"{schema}.events"
        before = await fingerprint(self.pool, schema)
        position = await self.pool.fetchval(
            f"SELECT coalesce(max(global_position), 0) FROM {events}"
        )
        request_id = f"fuzz-{uuid.uuid4().hex}"
        code, details, replies = grpc.StatusCode.OK, "", ()
        self.errors.take()  # whatever earlier work logged is not this call's
        sent = time.perf_counter()
        try:
            replies = tuple(
                await call(
                    self.channels[target.service],
                    target,
                    bodies,
                    metadata=self.metadata(request_id=request_id),
                    timeout_s=CALL_DEADLINE_S,
                )
            )
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        answered = time.perf_counter()
        settle = self.settlers.get(target.service)
        if settle is not None:
            await settle()
        after = self.at_rest[schema] = await fingerprint(self.pool, schema)
        changed = changed_tables(before, after)
        new_events: tuple[str, ...] = ()
        if changed:
            rows = await self.pool.fetch(
                f"SELECT event_type, correlation_id FROM {events} WHERE global_position > $1 "
                "ORDER BY global_position",
                position,
            )
            new_events = tuple(
                r["event_type"].rsplit(".", 1)[-1]
                + ("" if r["correlation_id"] == request_id else " (another caller's)")
                for r in rows
            )
        health = await self._health(target)
        self.calls += 1
        self.call_seconds += time.perf_counter() - started
        self.tally.setdefault(target.test_id, Counter())[code.name] += 1
        took = answered - sent
        self.slowest[target.test_id] = max(took, self.slowest.get(target.test_id, 0.0))
        return Outcome(
            code=code,
            details=details,
            replies=replies,
            changed=tuple(changed),
            new_events=new_events,
            health=health,
            logged=tuple(self.errors.take()),
        )

    async def _health(self, target: FuzzTarget) -> str:
        # Liveness, not readiness: inference's readiness follows its production
        # deployments, and the registry's fuzz may point one at an artifact that is no model.
        stub = health_pb2_grpc.HealthStub(self.channels[target.service])
        request = health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE)
        try:
            reply = await stub.Check(request, timeout=CALL_DEADLINE_S)
        except grpc.aio.AioRpcError as error:
            return f"unreachable ({error.code().name})"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    async def prepare(self, target: FuzzTarget) -> None:
        """Before fuzzing ``target``: its service's corpus set-up put back, if it has one."""
        prepare = self.preparers.get(target.service)
        if prepare is not None:
            await prepare()

    def summary(self) -> str:
        """Calls by RPC and status, and each RPC's slowest call (printed after a run)."""
        lines = []
        for name, codes in sorted(self.tally.items()):
            counts = ", ".join(f"{code} {n}" for code, n in codes.most_common())
            lines.append(f"  {name}: {counts}; slowest {self.slowest[name]:.2f} s")
        return "\n".join(lines)

    # -- a list of requests, one after the other ---------------------------------------

    async def send_all(self, target: FuzzTarget, requests: Sequence[tuple[Body, ...]]) -> None:
        """Send every request in turn; fail listing every distinct finding among them."""
        keys: list[tuple[str, ...]] = []
        for bodies in requests:
            outcome = await self.exchange(target, bodies)
            problems = judge(target, outcome)
            if problems:
                finding = self.findings.record(
                    target, bodies, outcome, problems, self.seeds.get(target.path, ())
                )
                if finding.key not in keys:
                    keys.append(finding.key)
        if keys:
            raise AssertionError(self._report(target, keys, "-k 'test_sweep and "))

    def _report(self, target: FuzzTarget, keys: list[tuple[str, ...]], how: str) -> str:
        found = [self.findings.get(key) for key in keys]
        listing = "\n".join(f"  {i}. {f.describe()}" for i, f in enumerate(found, 1))
        return (
            f"{len(found)} distinct finding(s) fuzzing {target}; reproduce with "
            f".venv/bin/python -m pytest tests/fuzz/test_rpc_fuzz.py -q "
            f"{how}{target.method.name}'\n{listing}"
        )

    # -- a Hypothesis run over one RPC ------------------------------------------------

    async def explore(
        self,
        target: FuzzTarget,
        requests: st.SearchStrategy[tuple[Body, ...]],
        examples: int,
    ) -> None:
        """Fuzz ``target`` with ``examples`` requests; fail listing every distinct finding."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._explore_in_thread, loop, target, requests, examples)

    def _explore_in_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        target: FuzzTarget,
        requests: st.SearchStrategy[tuple[Body, ...]],
        examples: int,
    ) -> None:
        chosen_seed = fixed_seed()
        keys: list[tuple[str, ...]] = []

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=chosen_seed is None,
            database=None,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=True,
        )
        @given(bodies=requests)
        def fuzzed_call(bodies: tuple[Body, ...]) -> None:
            outcome = asyncio.run_coroutine_threadsafe(self.exchange(target, bodies), loop).result(
                timeout=CALL_DEADLINE_S * 6
            )
            problems = judge(target, outcome)
            if problems:
                finding = self.findings.record(
                    target, bodies, outcome, problems, self.seeds.get(target.path, ())
                )
                if finding.key not in keys:
                    keys.append(finding.key)
                raise finding_type(finding)(finding.describe())

        if chosen_seed is not None:
            fuzzed_call = seed(chosen_seed)(fuzzed_call)
        try:
            fuzzed_call()
        except Exception as error:
            if not keys:
                raise
            seeded = f"LATHE_FUZZ_SEED={chosen_seed} " if chosen_seed is not None else ""
            report = self._report(target, keys, "-k 'not test_sweep and ")
            raise AssertionError(f"{seeded}{report}" if seeded else report) from error
