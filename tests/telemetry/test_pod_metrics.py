"""A pod's one /metrics over several processes (``libs.telemetry.pod_metrics``).

The siblings are real prometheus_client HTTP servers on loopback ports, as the processes
of a service serve theirs; what the pod serves is read back with Prometheus's text parser.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from libs.telemetry.pod_metrics import PROCESS_LABEL, UP_METRIC, PodMetrics
from tests.support.ports import free_port


@pytest.fixture
def sibling() -> Iterator[tuple[CollectorRegistry, str]]:
    """A sibling process's registry and the URL it serves it on."""
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield registry, f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    thread.join(timeout=5)


def _pod_exposition(own: CollectorRegistry, siblings: dict[str, str]) -> str:
    pod = CollectorRegistry(auto_describe=False)
    pod.register(PodMetrics(own, siblings, timeout_s=1.0))
    return generate_latest(pod).decode()


def _samples(text: str, name: str) -> dict[str, float]:
    """``name``'s sample values by process label."""
    return {
        s.labels[PROCESS_LABEL]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def test_each_family_is_written_once_with_every_process_samples(
    sibling: tuple[CollectorRegistry, str],
) -> None:
    sibling_registry, url = sibling
    own = CollectorRegistry()
    Counter("lathe_things", "things done", ["service"], registry=own).labels("inference").inc(3)
    Counter("lathe_things", "things done", ["service"], registry=sibling_registry).labels(
        "inference"
    ).inc(5)
    Gauge("lathe_only_here", "a gauge only the sibling has", registry=sibling_registry).set(7)

    text = _pod_exposition(own, {"1": url})

    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines)), "a family was written twice"
    assert _samples(text, "lathe_things_total") == {"0": 3.0, "1": 5.0}
    assert _samples(text, "lathe_only_here") == {"1": 7.0}
    assert _samples(text, UP_METRIC) == {"0": 1.0, "1": 1.0}
    (things,) = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "lathe_things_total" and s.labels[PROCESS_LABEL] == "1"
    ]
    assert things.labels == {"service": "inference", PROCESS_LABEL: "1"}


def test_a_sibling_that_does_not_answer_is_left_out_and_shown_down() -> None:
    own = CollectorRegistry()
    Gauge("lathe_here", "a gauge", registry=own).set(1)
    nobody = f"http://127.0.0.1:{free_port()}/metrics"

    text = _pod_exposition(own, {"1": nobody})

    assert _samples(text, "lathe_here") == {"0": 1.0}
    assert _samples(text, UP_METRIC) == {"0": 1.0, "1": 0.0}


def test_a_sibling_reporting_a_family_as_another_type_is_left_out_of_it(
    sibling: tuple[CollectorRegistry, str],
) -> None:
    sibling_registry, url = sibling
    own = CollectorRegistry()
    Gauge("lathe_mixed", "a gauge here", registry=own).set(2)
    Counter("lathe_mixed", "a counter there", registry=sibling_registry).inc()
    Gauge("lathe_fine", "the sibling's other family", registry=sibling_registry).set(4)

    text = _pod_exposition(own, {"1": url})

    assert _samples(text, "lathe_mixed") == {"0": 2.0}
    assert _samples(text, "lathe_fine") == {"1": 4.0}
