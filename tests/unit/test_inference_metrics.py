"""The inference service's metrics read its serving table and counters as they are.

The batcher and the serving table are the real ones; the logger and the feature client
are stand-ins holding only the counters the metrics read (a unit test of what is read,
not of how those objects count: their own tests cover that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.metrics import CallbackOptions, Observation

from services.inference.app import metrics
from services.inference.app.serving import ServingTable
from services.inference.batching import Batcher
from services.inference.domain.deployment import Failure

Callback = Callable[[CallbackOptions], Iterable[Observation]]


_MODELS = frozenset({"unit-credit", "unit-fraud", "unit-old"})
"""This test's models (the suite may host inference services in this process too)."""


def _by_deployment(callback: Callback) -> dict[tuple[str, str], float]:
    found = {
        (str(o.attributes["model"]), str(o.attributes["alias"])): o.value  # type: ignore[index]
        for o in callback(CallbackOptions())
    }
    return {key: value for key, value in found.items() if key[0] in _MODELS}


def _total(callback: Callback) -> float | None:
    observations = list(callback(CallbackOptions()))
    if not observations:
        return None
    (only,) = observations
    return only.value


def _loaded(version: int) -> Any:
    return SimpleNamespace(version=version)


def _instance(
    table: ServingTable, *, rejected: int = 0, dropped: int = 0
) -> metrics.InferenceInstance:
    batcher = Batcher(executors=1, max_batch_rows=8, max_queued_rows=64)
    batcher.stats.rejected_full = rejected
    batcher.stats.shadow_dropped = 2 * rejected
    batcher.stats.batches, batcher.stats.rows = 4, 10
    logger = SimpleNamespace(written=7, dropped=dropped, pending=2)
    features = SimpleNamespace(stats=SimpleNamespace(calls=3, shared_calls=1))
    return metrics.InferenceInstance(table, batcher, logger, features)  # type: ignore[arg-type]


@pytest.fixture
def watched() -> Iterator[Callable[[metrics.InferenceInstance], None]]:
    stops: list[Callable[[], None]] = []
    yield lambda instance: stops.append(metrics.watch(instance))
    for stop in stops:
        stop()


def test_deployments_report_what_serves_what_is_asked_and_what_was_refused(
    watched: Callable[[metrics.InferenceInstance], None],
) -> None:
    table = ServingTable()
    serving = table.ensure("unit-credit", "production")
    serving.current, serving.requested_version = _loaded(3), 3
    refused = table.ensure("unit-credit", "canary")
    refused.current, refused.requested_version = _loaded(2), 4
    refused.failure = Failure(4, "parity", "disagrees with ONNX Runtime", None)
    earlier_refusal = table.ensure("unit-fraud", "production")
    earlier_refusal.current, earlier_refusal.requested_version = _loaded(6), 6
    earlier_refusal.failure = Failure(5, "verify", "sha256 mismatch", None)
    loading = table.ensure("unit-fraud", "canary")
    loading.requested_version, loading.loading = 1, True
    gone = table.ensure("unit-old", "production")
    gone.removed = True
    watched(_instance(table))

    assert _by_deployment(metrics.serving_versions) == {
        ("unit-credit", "production"): 3,
        ("unit-credit", "canary"): 2,
        ("unit-fraud", "production"): 6,
        ("unit-fraud", "canary"): 0,
    }
    assert _by_deployment(metrics.requested_versions) == {
        ("unit-credit", "production"): 3,
        ("unit-credit", "canary"): 4,
        ("unit-fraud", "production"): 6,
        ("unit-fraud", "canary"): 1,
    }
    assert _by_deployment(metrics.refused) == {
        ("unit-credit", "production"): 0,
        ("unit-credit", "canary"): 1,
        ("unit-fraud", "production"): 0,
        ("unit-fraud", "canary"): 0,
    }
    assert _by_deployment(metrics.warm)[("unit-fraud", "canary")] == 0
    assert _by_deployment(metrics.warm)[("unit-credit", "canary")] == 1


def test_counters_sum_over_the_instances_of_the_process_and_stop_with_them(
    watched: Callable[[metrics.InferenceInstance], None],
) -> None:
    # Deltas: the suite may host inference services in this process too.
    counters = {
        "rejected": metrics.requests_rejected,
        "shadow_dropped": metrics.shadow_requests_dropped,
        "dropped": metrics.logs_dropped,
        "written": metrics.logs_written,
        "batches": metrics.batches,
        "rows": metrics.rows_scored,
        "shared": metrics.shared_feature_calls,
    }
    before = {name: _total(counter) or 0 for name, counter in counters.items()}
    first = _instance(ServingTable(), rejected=2, dropped=5)
    second = _instance(ServingTable(), rejected=1)
    stop_second = metrics.watch(second)
    watched(first)

    added = {name: (_total(counter) or 0) - before[name] for name, counter in counters.items()}
    assert added == {
        "rejected": 3,
        "shadow_dropped": 6,
        "dropped": 5,
        "written": 14,
        "batches": 8,
        "rows": 20,
        "shared": 2,
    }
    stop_second()
    assert (_total(metrics.requests_rejected) or 0) - before["rejected"] == 2
