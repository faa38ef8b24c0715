"""One /metrics for a pod whose service runs as several processes.

A service that runs N processes behind one port (``libs.runtime.processes``) still has
one metrics port, the one Prometheus scrapes. The first process serves it: at each
scrape it reads its own registry and each sibling's /metrics (served on a loopback port
the first process chose for it) and answers them as one exposition, every sample
labelled with the ``process`` it came from, so counters sum across processes with
``sum by (service)`` and nothing is reported twice. A sibling that does not answer is
left out of that scrape and shows as ``lathe_process_metrics_up{process="i"} 0``.

Both sides go through the text format (the first process's own registry is rendered and
parsed back like a sibling's), so a family reads the same from every process and is
written once, with one TYPE line.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

_log = logging.getLogger(__name__)
PROCESS_LABEL = "process"
UP_METRIC = "lathe_process_metrics_up"


class PodMetrics(Collector):
    """This process's metrics (``process="0"``) and its siblings', as one exposition."""

    def __init__(
        self,
        own: CollectorRegistry,
        siblings: Mapping[str, str],
        *,
        own_label: str = "0",
        timeout_s: float = 2.0,
    ) -> None:
        """``siblings``: process label -> URL of that process's /metrics."""
        self._own = own
        self._own_label = own_label
        self._siblings = dict(siblings)
        self._timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            UP_METRIC,
            "1 if the process's metrics were read at this scrape, else 0",
            labels=[PROCESS_LABEL],
        )
        _merge(
            families,
            text_string_to_metric_families(generate_latest(self._own).decode()),
            self._own_label,
        )
        up.add_metric([self._own_label], 1.0)
        for label, url in self._siblings.items():
            text = self._read(label, url)
            if text is not None:
                _merge(families, text_string_to_metric_families(text), label)
            up.add_metric([label], 0.0 if text is None else 1.0)
        yield from families.values()
        yield up

    def _read(self, label: str, url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=self._timeout_s) as reply:
                return reply.read().decode()
        except OSError as exc:
            _log.warning("metrics of process %s (%s) could not be read: %s", label, url, exc)
            return None


def _merge(families: dict[str, Metric], incoming: Iterable[Metric], label: str) -> None:
    for family in incoming:
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        elif merged.type != family.type:
            _log.warning(
                "process %s reports %s as a %s, another as a %s; its samples are left out",
                label,
                family.name,
                family.type,
                merged.type,
            )
            continue
        merged.samples.extend(
            s._replace(labels={**s.labels, PROCESS_LABEL: label}) for s in family.samples
        )
