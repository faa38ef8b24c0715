"""Per-process OpenTelemetry set-up: tracer, meter, exporters and instrumentation.

Spans go to an OTLP collector when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, and
otherwise to JSON-lines files under the given directory so development traces
stay inspectable. Metrics are served for Prometheus on ``metrics_port``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from libs.telemetry.sampling import SkipUntracedClientCalls
from libs.telemetry.span_files import JsonLinesSpanExporter


@dataclass
class Telemetry:
    """Handles to flush and stop this process's telemetry on shutdown."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def configure_telemetry(
    service_name: str,
    *,
    traces_dir: Path | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    sample_ratio: float = 1.0,
    process_label: str | None = None,
    sibling_metrics: Mapping[str, str] | None = None,
) -> Telemetry:
    """Install this process's tracer and meter providers (once, at start-up).

    ``process_label`` names this process among the processes of one service in a pod
    (its span file is ``<service>-<label>.jsonl``); ``sibling_metrics`` (label -> URL),
    given to the pod's first process, makes ``metrics_port`` serve every process's
    metrics as one, each sample labelled with its process (``pod_metrics``).
    """
    resource = Resource.create({"service.name": service_name})
    resource = resource.merge(
        Resource({"service.instance.id": _instance_id(resource, process_label)})
    )
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))

    tracer_provider = TracerProvider(
        resource=resource, sampler=SkipUntracedClientCalls(sample_ratio)
    )
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif traces_dir is not None:
        file_name = service_name if process_label is None else f"{service_name}-{process_label}"
        exporter = JsonLinesSpanExporter(traces_dir / f"{file_name}.jsonl")
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(tracer_provider)

    readers: list[MetricReader] = []
    if metrics_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        if sibling_metrics:
            from prometheus_client import REGISTRY, CollectorRegistry

            from libs.telemetry.pod_metrics import PodMetrics

            pod = CollectorRegistry(auto_describe=False)
            pod.register(PodMetrics(REGISTRY, sibling_metrics, own_label=process_label or "0"))
            start_http_server(metrics_port, addr=metrics_host, registry=pod)
        else:
            start_http_server(metrics_port, addr=metrics_host)
        readers.append(PrometheusMetricReader())
    if otlp:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)

    from libs.telemetry.asyncpg_spans import RecordedTraceAsyncPGInstrumentor

    RecordedTraceAsyncPGInstrumentor().instrument(tracer_provider=tracer_provider)
    return Telemetry(tracer_provider, meter_provider)


def _instance_id(resource: Resource, process_label: str | None) -> str:
    """The deployment's id for this instance (OTEL_RESOURCE_ATTRIBUTES, e.g. the pod's name;
    else the host's), told apart per process when a service runs several in one pod, so
    their metrics exported over OTLP do not overwrite each other."""
    given = resource.attributes.get("service.instance.id")
    instance = str(given) if given else socket.gethostname()
    return instance if process_label is None else f"{instance}/{process_label}"
