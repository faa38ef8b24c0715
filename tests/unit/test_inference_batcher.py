"""The batcher: work conservation, deadline drops, the bounded queue, the cost model's rule."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
import weakref
from collections.abc import Sequence

import pytest

from services.inference.batching import (
    Batcher,
    CostModel,
    DeadlinePassed,
    QueueFull,
    ShuttingDown,
)
from services.inference.batching.cost_model import WaitInputs, wait_seconds


class Target:
    """Sums each part; records the batches it ran; can be held to build a queue."""

    def __init__(self, seconds: float = 0.0, priority: int = 0) -> None:
        self.cost = CostModel()
        self.priority = priority
        self.batches: list[list[int]] = []
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()

    def run_batch(self, parts: Sequence[list[int]]) -> list[int]:
        self.gate.wait(5)
        time.sleep(self.seconds)
        self.batches.append([len(p) for p in parts])
        return [sum(p) for p in parts]


def _batcher(**kw: object) -> Batcher:
    options: dict[str, object] = {
        "executors": 1,
        "max_batch_rows": 64,
        "max_queued_rows": 1000,
        "max_wait_s": 0.0,
    }
    options.update(kw)
    return Batcher(**options)  # type: ignore[arg-type]


async def test_a_lone_request_runs_at_once_alone() -> None:
    batcher, target = _batcher(max_wait_s=0.5), Target()
    batcher.start()
    started = time.perf_counter()
    assert await batcher.submit(target, [1, 2], 2, None) == 3
    # No waiting for a batch that will not come (the bound is loose for a busy machine).
    assert batcher.stats.waited == 0 and time.perf_counter() - started < 0.25
    assert target.batches == [[2]]
    await batcher.close()


async def test_rows_queued_while_busy_run_together_up_to_the_max() -> None:
    batcher, target = _batcher(max_batch_rows=10), Target()
    batcher.start()
    target.gate.clear()
    first = asyncio.create_task(batcher.submit(target, [1], 1, None))
    await asyncio.sleep(0.02)  # the executor holds the first request
    rest = [asyncio.create_task(batcher.submit(target, [i, i], 2, None)) for i in range(8)]
    await asyncio.sleep(0.02)
    target.gate.set()
    assert await first == 1
    assert [await r for r in rest] == [2 * i for i in range(8)]
    assert target.batches[0] == [1]
    assert target.batches[1] == [2] * 5 and target.batches[2] == [2] * 3  # 10 rows, then 6
    assert batcher.stats.largest_batch == 10
    await batcher.close()


async def test_without_batching_every_request_runs_alone() -> None:
    batcher, target = _batcher(batching=False), Target()
    batcher.start()
    target.gate.clear()
    tasks = [asyncio.create_task(batcher.submit(target, [1], 1, None)) for _ in range(4)]
    await asyncio.sleep(0.02)
    target.gate.set()
    await asyncio.gather(*tasks)
    assert target.batches == [[1]] * 4
    await batcher.close()


async def test_expired_requests_are_dropped_before_computing() -> None:
    batcher, target = _batcher(), Target()
    batcher.start()
    with pytest.raises(DeadlinePassed):
        await batcher.submit(target, [1], 1, time.monotonic() - 0.001)
    target.gate.clear()
    blocker = asyncio.create_task(batcher.submit(target, [1], 1, None))
    await asyncio.sleep(0.02)
    doomed = asyncio.create_task(batcher.submit(target, [5], 1, time.monotonic() + 0.01))
    alive = asyncio.create_task(batcher.submit(target, [7], 1, time.monotonic() + 5))
    await asyncio.sleep(0.05)  # the first deadline passes while it waits
    target.gate.set()
    await blocker
    with pytest.raises(DeadlinePassed):
        await doomed
    assert await alive == 7
    assert target.batches == [[1], [1]]  # the expired one never reached the model
    assert batcher.stats.dropped_expired == 2
    await batcher.close()


async def test_a_full_queue_refuses_instead_of_growing() -> None:
    batcher, target = _batcher(max_queued_rows=4), Target()
    batcher.start()
    target.gate.clear()
    running = asyncio.create_task(batcher.submit(target, [0], 1, None))
    await asyncio.sleep(0.02)
    queued = [asyncio.create_task(batcher.submit(target, [1, 1], 2, None)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull):
        await batcher.submit(target, [1], 1, None)
    target.gate.set()
    await asyncio.gather(running, *queued)
    assert batcher.stats.rejected_full == 1
    await batcher.close()


async def test_executors_run_in_parallel_threads() -> None:
    batcher, target = _batcher(executors=2, batching=False), Target(seconds=0.1)
    batcher.start()
    started = time.perf_counter()
    await asyncio.gather(*(batcher.submit(target, [1], 1, None) for _ in range(2)))
    assert time.perf_counter() - started < 0.18  # two at once, not one after the other
    await batcher.close()


async def test_serving_rows_go_before_shadow_rows() -> None:
    batcher = _batcher()
    serving, shadow = Target(), Target(priority=1)
    batcher.start()
    serving.gate.clear()
    blocker = asyncio.create_task(batcher.submit(serving, [0], 1, None))
    await asyncio.sleep(0.02)
    order: list[str] = []
    late_shadow = asyncio.create_task(batcher.submit(shadow, [1], 1, None))
    await asyncio.sleep(0.005)
    late_serving = asyncio.create_task(batcher.submit(serving, [2], 1, None))
    late_shadow.add_done_callback(lambda _: order.append("shadow"))
    late_serving.add_done_callback(lambda _: order.append("serving"))
    serving.gate.set()
    await asyncio.gather(blocker, late_shadow, late_serving)
    assert order == ["serving", "shadow"]
    await batcher.close()


async def test_a_target_nothing_else_holds_is_freed() -> None:
    """Versions replaced while rows of theirs ran (serving or shadow) are not kept alive by
    the batcher: their runtimes' memory comes back without anyone telling it."""
    batcher = _batcher()
    batcher.start()
    held: list[weakref.ref[Target]] = []
    for priority in (0, 1):
        target = Target(seconds=0.01, priority=priority)
        held.append(weakref.ref(target))
        await asyncio.gather(*(batcher.submit(target, [i], 1, None) for i in range(3)))
        assert target.batches
        del target
    await asyncio.sleep(0)
    gc.collect()

    assert [ref() for ref in held] == [None, None]
    await batcher.close()


async def test_rows_of_a_cancelled_request_are_uncounted_even_when_its_target_goes() -> None:
    """A queued request whose caller left, for a version nothing else holds any more: its
    rows leave the count (or the queue bound would shrink for good) and the version goes."""
    batcher = _batcher(max_queued_rows=4)
    busy = Target()
    batcher.start()
    busy.gate.clear()
    blocker = asyncio.create_task(batcher.submit(busy, [0], 1, None))
    await asyncio.sleep(0.02)
    replaced = Target()
    held = weakref.ref(replaced)
    waiting = asyncio.create_task(batcher.submit(replaced, [1, 2, 3], 3, None))
    await asyncio.sleep(0)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    del replaced
    busy.gate.set()
    await blocker
    await asyncio.sleep(0.05)
    gc.collect()

    assert batcher.queued_rows == 0
    assert held() is None
    assert await batcher.submit(busy, [2, 3], 2, None) == 5
    await batcher.close()


async def test_close_answers_every_request_it_holds() -> None:
    """Running, queued and late requests all hear that the service stops; none hangs."""
    batcher = _batcher()
    target = Target()
    batcher.start()
    target.gate.clear()
    running = asyncio.create_task(batcher.submit(target, [1], 1, None))
    await asyncio.sleep(0.05)  # taken by the executor, blocked in run_batch
    queued = asyncio.create_task(batcher.submit(target, [2], 1, None))
    await asyncio.sleep(0.01)

    await batcher.close()
    target.gate.set()
    outcomes = await asyncio.wait_for(
        asyncio.gather(running, queued, return_exceptions=True), timeout=2
    )

    assert [type(o) for o in outcomes] == [ShuttingDown, ShuttingDown]
    with pytest.raises(ShuttingDown):
        await batcher.submit(target, [3], 1, None)


class ShortTarget(Target):
    """Returns one result too few: a runtime bug the batcher must not turn into a hang."""

    def run_batch(self, parts: Sequence[list[int]]) -> list[int]:
        return super().run_batch(parts)[:-1]


class BrokenCostTarget(Target):
    """Its cost model fails after the batch ran: an error outside the runtime's call."""

    def __init__(self) -> None:
        super().__init__()
        self.cost.observe = self._fail  # type: ignore[method-assign]

    def _fail(self, rows: int, seconds: float) -> None:
        raise ArithmeticError("cost model broke")


@pytest.mark.parametrize("faulty", [ShortTarget, BrokenCostTarget])
async def test_a_failing_batch_fails_its_requests_and_the_executor_serves_on(
    faulty: type[Target],
) -> None:
    batcher, good, blocker = _batcher(inline_below_s=0.0), Target(), Target()
    bad = faulty()
    batcher.start()
    blocker.gate.clear()
    held = asyncio.create_task(batcher.submit(blocker, [0], 1, None))
    await asyncio.sleep(0.05)  # the only executor holds it: the next two queue as one batch
    failing = [asyncio.create_task(batcher.submit(bad, [i], 1, None)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    blocker.gate.set()

    outcomes = await asyncio.wait_for(asyncio.gather(*failing, return_exceptions=True), 2)
    assert await held == 0
    assert all(isinstance(o, RuntimeError | ArithmeticError) for o in outcomes), outcomes
    assert bad.batches == [[1, 1]]
    assert await asyncio.wait_for(batcher.submit(good, [5], 1, None), 2) == 5
    await asyncio.wait_for(batcher.close(), 2)


async def test_starved_shadow_rows_never_refuse_serving_requests() -> None:
    """Shadow rows wait behind serving rows; when they pile up it is the shadow's own
    rows that are refused, never a serving request."""
    batcher = _batcher(max_queued_rows=4)
    serving, shadow = Target(), Target(priority=1)
    batcher.start()
    serving.gate.clear()
    blocker = asyncio.create_task(batcher.submit(serving, [0], 1, None))
    await asyncio.sleep(0.02)
    shadows = [asyncio.create_task(batcher.submit(shadow, [i], 1, None)) for i in range(4)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await batcher.submit(shadow, [9], 1, None)
    waiting = [asyncio.create_task(batcher.submit(serving, [i], 1, None)) for i in range(4)]
    await asyncio.sleep(0)
    serving.gate.set()

    assert await asyncio.gather(blocker, *waiting) == [0, 0, 1, 2, 3]
    assert await asyncio.gather(*shadows) == [0, 1, 2, 3]
    assert batcher.stats.rejected_full == 0
    assert batcher.stats.shadow_dropped == 1
    await batcher.close()


def test_the_cost_model_fits_fixed_and_per_row_costs() -> None:
    cost = CostModel(decay=1.0)
    for n in (1, 8, 64, 256) * 5:
        cost.observe(n, 0.002 + 0.00001 * n)
    assert cost.fixed_s == pytest.approx(0.002, rel=0.05)
    assert cost.per_row_s == pytest.approx(0.00001, rel=0.05)
    assert cost.seconds(100) == pytest.approx(0.003, rel=0.05)


def _inputs(**kw: object) -> WaitInputs:
    values: dict[str, object] = {
        "queued_rows": 4,
        "max_batch_rows": 256,
        "arrival_requests_per_s": 20_000.0,
        "rows_per_request": 1.0,
        "idle_executors": 0,
        "incoming_requests": None,
        "slack_s": None,
        "max_wait_s": 0.005,
    }
    values.update(kw)
    return WaitInputs(**values)  # type: ignore[arg-type]


def test_waiting_pays_only_when_the_cost_model_says_so() -> None:
    cost = CostModel(decay=1.0, fixed_s=0.002, per_row_s=1e-5)
    assert wait_seconds(cost, _inputs()) > 0  # 40 rows expected within the fixed cost
    assert wait_seconds(cost, _inputs(arrival_requests_per_s=100.0)) == 0  # low load: run now
    # Many rows, but in few requests (one client, big requests): nothing comes meanwhile.
    assert wait_seconds(cost, _inputs(arrival_requests_per_s=100.0, rows_per_request=256)) == 0
    assert wait_seconds(cost, _inputs(idle_executors=1)) == 0  # someone is free: run now
    # Busy lately, but nobody else's request is on its way (a closed-loop client): run now.
    assert wait_seconds(cost, _inputs(incoming_requests=0)) == 0
    assert wait_seconds(cost, _inputs(incoming_requests=1)) == 0
    assert wait_seconds(cost, _inputs(incoming_requests=8)) > 0
    assert wait_seconds(cost, _inputs(queued_rows=256)) == 0  # already full
    assert wait_seconds(cost, _inputs(max_wait_s=0.0)) == 0
    cheap = CostModel(decay=1.0, fixed_s=1e-5, per_row_s=1e-6)
    assert wait_seconds(cheap, _inputs()) == 0  # nothing to save


def test_waiting_never_passes_the_earliest_deadline() -> None:
    cost = CostModel(decay=1.0, fixed_s=0.002, per_row_s=1e-5)
    wait = wait_seconds(cost, _inputs(slack_s=0.0025))
    assert 0 <= wait <= 0.0025 - cost.seconds(4)
    assert wait_seconds(cost, _inputs(slack_s=0.001)) == 0


class FixedCost(CostModel):
    """A cost model that keeps its prior (the test's machine does not change it)."""

    def observe(self, rows: int, seconds: float, *, weight: float = 1.0) -> None:
        pass


class Probe(Target):
    """A Target that records which thread ran each batch."""

    def __init__(self, fixed_s: float) -> None:
        super().__init__()
        self.cost = CostModel(decay=1.0, fixed_s=fixed_s, per_row_s=0.0)
        self.threads: list[int] = []

    def run_batch(self, parts: Sequence[list[int]]) -> list[int]:
        self.threads.append(threading.get_ident())
        return super().run_batch(parts)


async def test_cheap_batches_run_on_the_loop_and_dear_ones_in_a_thread() -> None:
    batcher = _batcher(inline_below_s=0.001)
    cheap, dear = Probe(fixed_s=1e-5), Probe(fixed_s=0.01)
    batcher.start()
    assert await batcher.submit(cheap, [1, 2], 2, None) == 3
    assert await batcher.submit(dear, [3], 1, None) == 3
    assert cheap.threads == [threading.get_ident()]  # no hop to a thread and back
    assert dear.threads and dear.threads[0] != threading.get_ident()
    assert batcher.stats.inline == 1
    await batcher.close()


async def test_requests_ready_in_one_loop_iteration_run_as_one_batch_on_the_loop() -> None:
    # E.g. every request of one shared feature call: they resume together.
    batcher, target = _batcher(inline_below_s=0.001), Probe(fixed_s=1e-5)
    batcher.start()
    await asyncio.sleep(0)  # the executor is idle, waiting for work
    results = await asyncio.gather(*(batcher.submit(target, [i], 1, None) for i in range(5)))
    assert results == list(range(5))
    assert target.batches == [[1, 1, 1, 1, 1]]
    await batcher.close()


async def test_a_lone_client_never_waits_however_busy_it_keeps_the_model() -> None:
    incoming = {"requests": 0}
    batcher = _batcher(max_wait_s=0.05, incoming=lambda target: incoming["requests"])
    target = Target()
    target.cost = FixedCost(fixed_s=0.01, per_row_s=0.0)  # a dear fixed cost per batch
    batcher.start()
    for i in range(20):  # back to back: hundreds of requests a second
        assert await batcher.submit(target, [i], 1, None) == i
    assert batcher.stats.waited == 0  # nobody else's request was on its way
    incoming["requests"] = 8  # now others are (e.g. fetching their features): waiting pays
    await batcher.submit(target, [1], 1, None)
    assert batcher.stats.waited == 1
    await batcher.close()


async def test_a_lone_request_on_a_quiet_service_runs_without_suspending() -> None:
    incoming = {"requests": 0}
    # A threshold far above the probe's cost, whatever a loaded machine measures for it.
    batcher = _batcher(inline_below_s=1.0, incoming=lambda target: incoming["requests"])
    target = Probe(fixed_s=1e-5)
    batcher.start()
    await asyncio.sleep(0)  # the executor is idle
    lone = batcher.submit(target, [4, 5], 2, None)
    with pytest.raises(StopIteration) as done:
        lone.send(None)  # finished on its first step: no executor's wake-up, no future
    assert done.value.value == 9 and batcher.stats.inline == 1
    incoming["requests"] = 1  # another request for the model is on its way: queue for it
    joined = asyncio.ensure_future(batcher.submit(target, [1], 1, None))
    await asyncio.sleep(0)
    assert not joined.done()  # queued, for the executor (which runs it on the loop)
    assert await joined == 1 and batcher.stats.inline == 2 and target.batches == [[2], [1]]
    await batcher.close()
