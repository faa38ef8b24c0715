"""Work-conserving dynamic batching: one executor per core, shared by every deployment.

Requests enqueue their rows per target (a loaded model version). Whenever an executor is
free it takes the target whose oldest request has waited longest (serving targets before
shadows) and everything queued for it, up to ``max_batch_rows``: at low load a request
runs the moment it arrives, alone, and at high load batches grow by themselves because
rows pile up while the executors are busy. It waits for more rows only when the
target's fitted cost model says waiting pays (``cost_model.wait_seconds``), bounded by
the earliest deadline in the batch, and never while no other request for the target is
on its way (``incoming``: a lone client's next request cannot come before this answer).
Requests whose deadline has passed (or whose caller went away) are dropped before
computing. The queue is bounded in rows: past it,
``submit`` raises ``QueueFull`` (RESOURCE_EXHAUSTED) instead of letting latency grow.
Shadow rows (priority 1) have a bound of their own, so a shadow starved by serving traffic
drops its own rows and never makes serving requests wait or be refused.

Queues hold their targets weakly: a version that no longer serves (and has no rows
waiting) is freed with its runtime, whoever forgot to tell the batcher.

Executors are asyncio tasks. A batch the target's cost model expects to take less than
``inline_below_s`` runs right there, on the event loop's thread; a longer one goes to a
thread of the executor's own, where ONNX Runtime (and torch) release the GIL while they
compute, so K executors use K cores. Small batches stay on the loop because the hop
costs more than they do: handing a batch to a thread and its result back took
~0.15-0.3 ms per batch on the 2-core machine (more than preprocessing and scoring one
row of either benchmark model), and a thread that needs the GIL back while the loop is
busy waits up to the interpreter's switch interval (5 ms): with threads for every batch,
64 concurrent clients saw a median 3 ms in the batcher for 0.2 ms of compute. Requests
that become ready in the same loop iteration (e.g. all the rows of one coalesced
feature call) are queued before an executor wakes, so they still run as one batch. A
request that finds every executor idle, nothing queued and no other request for its
model on its way runs at once in its own coroutine (no executor's wake-up, no future):
that is the lone request of a quiet service, where every hop is latency.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.inference.batching.cost_model import CostModel, WaitInputs, wait_seconds

_log = logging.getLogger(__name__)
_ARRIVAL_TAU_S = 0.05


class QueueFull(Exception):
    """More rows are waiting than the service holds; the caller should back off."""


class DeadlinePassed(Exception):
    """The request's deadline passed before its rows were computed."""


class ShuttingDown(Exception):
    """The batcher stopped before the request's rows were computed."""


class BatchTarget(Protocol):
    """What the batcher runs: merges parts, computes, splits results back per part."""

    cost: CostModel
    priority: int
    """0: serving traffic; 1: shadow (runs only when no serving rows wait)."""

    def run_batch(self, parts: Sequence[Any]) -> Sequence[Any]:
        """Blocking; called in an executor's thread; one result per part."""
        ...


@dataclass(eq=False)
class _Pending:
    target: BatchTarget
    """Held by each waiting request: a queue with rows waiting keeps its target (and so
    its place in the weak dictionary and its rows' count) until they are taken."""
    part: Any
    rows: int
    deadline: float | None
    """``time.monotonic()`` deadline."""
    future: asyncio.Future[Any]
    enqueued: float


@dataclass(eq=False)
class _Queue:
    """A target's waiting requests. Only its waiting requests refer to the target, so an
    empty queue never keeps a target (a model version and its runtime) alive."""

    pending: deque[_Pending] = field(default_factory=deque)
    rows: int = 0
    decayed_requests: float = 0.0
    decayed_rows: float = 0.0
    last_arrival: float = 0.0

    def arrive(self, rows: int, now: float) -> None:
        decay = math.exp(-(now - self.last_arrival) / _ARRIVAL_TAU_S)
        self.decayed_requests = self.decayed_requests * decay + 1
        self.decayed_rows = self.decayed_rows * decay + rows
        self.last_arrival = now

    def arrival_rate(self, now: float) -> float:
        """Requests per second lately (exponentially decayed over ``_ARRIVAL_TAU_S``)."""
        decayed = self.decayed_requests * math.exp(-(now - self.last_arrival) / _ARRIVAL_TAU_S)
        return decayed / _ARRIVAL_TAU_S

    def rows_per_request(self) -> float:
        return self.decayed_rows / self.decayed_requests if self.decayed_requests else 1.0


@dataclass
class BatcherStats:
    """Counters for metrics and tests."""

    batches: int = 0
    rows: int = 0
    dropped_expired: int = 0
    rejected_full: int = 0
    waited: int = 0
    largest_batch: int = 0
    inline: int = 0
    """Batches run on the event loop's thread (cheaper than the hop to a thread)."""
    shadow_dropped: int = 0
    """Shadow submissions shed: past the shadow rows' own bound, or their time budget."""


class Batcher:
    """Queues rows per target and runs them on ``executors`` threads."""

    def __init__(
        self,
        *,
        executors: int,
        max_batch_rows: int,
        max_queued_rows: int,
        max_wait_s: float = 0.0,
        batching: bool = True,
        inline_below_s: float = 0.0,
        incoming: Callable[[BatchTarget], int] | None = None,
    ) -> None:
        """``incoming(target)``: requests for ``target`` received but not yet submitted
        (e.g. fetching their features); None when the caller cannot tell."""
        self.executors = executors
        self.inline_below_s = inline_below_s
        self.incoming = incoming
        self.max_batch_rows = max_batch_rows
        self.max_queued_rows = max_queued_rows
        self.max_wait_s = max_wait_s
        self.batching = batching
        self.stats = BatcherStats()
        self._queues: weakref.WeakKeyDictionary[BatchTarget, _Queue] = weakref.WeakKeyDictionary()
        self._queued_rows = 0
        self._shadow_rows = 0
        """Of ``_queued_rows``, those of shadow targets (bounded apart)."""
        self._closed = False
        self._work = asyncio.Event()
        self._idle = 0
        self._pool = ThreadPoolExecutor(max_workers=executors, thread_name_prefix="executor")
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the executors (on the running loop); ``close`` stops them."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._executor(), name=f"executor-{i}")
                for i in range(self.executors)
            ]

    async def run(self, stop: asyncio.Event) -> None:
        """A background task: executors run until ``stop`` is set."""
        self.start()
        await stop.wait()
        await self.close()

    async def close(self) -> None:
        """Stop the executors; every request not answered yet (queued, in a batch being
        computed, or submitted from now on) gets ``ShuttingDown``."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a dead executor must not keep the queue unanswered
                _log.exception("an executor had failed")
        self._tasks = []
        for queue in list(self._queues.values()):
            for pending in queue.pending:
                _fail(pending, ShuttingDown("the service is shutting down; retry elsewhere"))
        self._queues.clear()
        self._queued_rows = self._shadow_rows = 0
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(
        self, target: BatchTarget, part: Any, rows: int, deadline: float | None
    ) -> Any:
        """Queue ``part`` (``rows`` rows) for ``target``; its result once computed."""
        now = time.monotonic()
        if self._closed:
            raise ShuttingDown("the service is shutting down; retry elsewhere")
        if deadline is not None and deadline <= now:
            self._expired(target)
            raise DeadlinePassed("the deadline had passed before the rows were queued")
        self._check_room(target, rows)
        queue = self._queues.get(target)
        if queue is None:
            queue = self._queues[target] = _Queue()
        if self._alone(target, rows):
            queue.arrive(rows, now)
            results, seconds = _timed(target, [part])
            target.cost.observe(rows, seconds)
            self._count(rows, inline=True)
            return results[0]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue.pending.append(_Pending(target, part, rows, deadline, future, now))
        queue.rows += rows
        queue.arrive(rows, now)
        self._queued_rows += rows
        if target.priority:
            self._shadow_rows += rows
        self._work.set()
        return await future

    def _check_room(self, target: BatchTarget, rows: int) -> None:
        """``QueueFull`` past the bound of ``target``'s kind (serving rows and shadow rows
        are bounded apart; one request bigger than the bound runs when nothing waits)."""
        waiting = self._shadow_rows if target.priority else self._queued_rows - self._shadow_rows
        if waiting + rows <= self.max_queued_rows or waiting == 0:
            return
        if target.priority:
            self.stats.shadow_dropped += 1
            raise QueueFull(f"{waiting} shadow rows are waiting; these are dropped")
        self.stats.rejected_full += 1
        raise QueueFull(
            f"{waiting} rows are waiting for an executor (at most {self.max_queued_rows}); "
            "retry with backoff or add replicas"
        )

    def _alone(self, target: BatchTarget, rows: int) -> bool:
        """Whether a request can run right now, in the caller, without an executor's hop:
        every executor idle, nothing queued, nothing else for ``target`` on its way (so
        no batch is lost: requests that resume together are all still counted as
        incoming when the first one submits), and cheap enough for the loop's thread."""
        if self._queued_rows or self._idle < self.executors or not self._tasks:
            return False
        if self.batching and (self.incoming is None or self.incoming(target) > 0):
            return False
        return target.cost.seconds(rows) < self.inline_below_s

    def _count(self, rows: int, *, inline: bool) -> None:
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.largest_batch = max(self.stats.largest_batch, rows)
        self.stats.inline += inline

    async def _executor(self) -> None:
        while True:
            await self._serve(*await self._next_queue())

    async def _serve(self, target: BatchTarget, queue: _Queue) -> None:
        """One batch of ``target``'s (a method of its own: ``target`` is referenced only
        while it runs, not while the executor waits for work)."""
        batch = self._take(target, queue, self.max_batch_rows if self.batching else 1)
        if not batch:
            return
        try:
            if self.batching:
                batch += await self._maybe_wait(target, queue, batch)
            await self._run(target, batch)
        except asyncio.CancelledError:
            for pending in batch:  # taken, so ``close`` cannot see them: answer here
                _fail(pending, ShuttingDown("the service is shutting down; retry elsewhere"))
            raise
        except Exception as exc:  # the batcher's own fault: answer the batch, keep serving
            _log.exception("a batch of %d requests failed outside the runtime", len(batch))
            for pending in batch:
                _fail(pending, exc)

    async def _run(self, target: BatchTarget, batch: list[_Pending]) -> None:
        rows = sum(p.rows for p in batch)
        parts = [p.part for p in batch]
        try:
            inline = target.cost.seconds(rows) < self.inline_below_s
            if inline:
                results, seconds = _timed(target, parts)
            else:
                loop = asyncio.get_running_loop()
                results, seconds = await loop.run_in_executor(self._pool, _timed, target, parts)
            if len(results) != len(parts):
                raise RuntimeError(f"{len(results)} results for a batch of {len(parts)} requests")
        except Exception as exc:
            for pending in batch:
                _fail(pending, exc)
            return
        target.cost.observe(rows, seconds)
        self._count(rows, inline=inline)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    async def _next_queue(self) -> tuple[BatchTarget, _Queue]:
        while True:
            best = self._oldest_waiting()
            if best is not None:
                return best
            self._work.clear()
            self._idle += 1
            try:
                await self._work.wait()
            finally:
                self._idle -= 1

    def _oldest_waiting(self) -> tuple[BatchTarget, _Queue] | None:
        """The queue to serve next: serving before shadow, then the longest waiting. (Not
        inlined in ``_next_queue``: its loop variables would hold a target while it waits.)"""
        best: tuple[BatchTarget, _Queue] | None = None
        for target, queue in list(self._queues.items()):
            if queue.pending and (
                best is None
                or (target.priority, queue.pending[0].enqueued)
                < (best[0].priority, best[1].pending[0].enqueued)
            ):
                best = (target, queue)
        return best

    def _take(
        self, target: BatchTarget, queue: _Queue, max_rows: int, *, at_least_one: bool = True
    ) -> list[_Pending]:
        """Pop requests in order up to ``max_rows`` (a bigger first one runs alone),
        dropping those whose deadline passed or whose caller left."""
        now = time.monotonic()
        taken: list[_Pending] = []
        rows = 0
        while queue.pending:
            head = queue.pending[0]
            if head.future.done() or (head.deadline is not None and head.deadline <= now):
                queue.pending.popleft()
                self._dequeued(target, queue, head)
                if not head.future.done():
                    self._expired(target)
                    head.future.set_exception(
                        DeadlinePassed("the deadline passed while the rows waited in the queue")
                    )
                continue
            if rows + head.rows > max_rows and (taken or not at_least_one):
                break
            queue.pending.popleft()
            self._dequeued(target, queue, head)
            taken.append(head)
            rows += head.rows
            if rows >= max_rows:
                break
        return taken

    def _expired(self, target: BatchTarget) -> None:
        """Count a request dropped for its deadline: a serving one, or shadow work shed."""
        if target.priority:
            self.stats.shadow_dropped += 1
        else:
            self.stats.dropped_expired += 1

    def _dequeued(self, target: BatchTarget, queue: _Queue, pending: _Pending) -> None:
        queue.rows -= pending.rows
        self._queued_rows -= pending.rows
        if target.priority:
            self._shadow_rows -= pending.rows

    async def _maybe_wait(
        self, target: BatchTarget, queue: _Queue, batch: list[_Pending]
    ) -> list[_Pending]:
        rows = sum(p.rows for p in batch)
        now = time.monotonic()
        deadlines = [p.deadline for p in batch if p.deadline is not None]
        wait = wait_seconds(
            target.cost,
            WaitInputs(
                queued_rows=rows + queue.rows,
                max_batch_rows=self.max_batch_rows,
                arrival_requests_per_s=queue.arrival_rate(now),
                rows_per_request=queue.rows_per_request(),
                idle_executors=self._idle,
                incoming_requests=None if self.incoming is None else self.incoming(target),
                slack_s=(min(deadlines) - now) if deadlines else None,
                max_wait_s=self.max_wait_s,
            ),
        )
        if wait <= 0:
            return []
        self.stats.waited += 1
        await asyncio.sleep(wait)
        return self._take(target, queue, self.max_batch_rows - rows, at_least_one=False)


def _fail(pending: _Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)


def _timed(target: BatchTarget, parts: list[Any]) -> tuple[Sequence[Any], float]:
    """The batch's results and its compute time (without the hop to and from a thread)."""
    started = time.perf_counter()
    results = target.run_batch(parts)
    return results, time.perf_counter() - started
