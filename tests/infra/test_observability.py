"""Prometheus and OpenTelemetry Collector configuration agree with the code and manifests.

Caught here: scrape targets on ports the services do not serve, alerts on metric names the
code no longer exports or jobs Prometheus does not define, a collector pipeline naming a
component it does not configure, services exporting to an endpoint the collector does not
listen on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

from libs.config import LatheSettings, ServiceName
from libs.platform.runner import _METRICS_PORTS
from services.inference.app import metrics as inference_metrics
from tests.infra.manifests import (
    BASE,
    INFRA,
    REPO_ROOT,
    SHARED_CONFIG,
    Manifest,
    container_port,
    load_directory,
    load_documents,
    named,
    only_container,
)

_PROMETHEUS = INFRA / "prometheus"
_COLLECTOR = INFRA / "otel"
_RELAY_SOURCE = REPO_ROOT / "libs" / "eventstore" / "relay.py"
_COUNTER = re.compile(r'create_counter\(\s*"(?P<name>[^"]+)"(?:\s*,\s*unit="(?P<unit>[^"]*)")?')
_GAUGE = re.compile(
    r'create_observable_gauge\(\s*"(?P<name>[^"]+)",\s*callbacks=[^,]+,\s*unit="(?P<unit>[^"]*)"'
)
_JOB_SELECTOR = re.compile(r'\bjob="([^"]+)"')
_COMPONENT_LABEL = "__meta_kubernetes_pod_label_app_kubernetes_io_component"
_PORT_NAME_LABEL = "__meta_kubernetes_pod_container_port_name"


def _prometheus() -> dict[str, Any]:
    (config,) = load_documents(_PROMETHEUS / "prometheus.yml")
    return config


def _scrape_job(name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in _prometheus()["scrape_configs"]}
    assert name in jobs, f"prometheus.yml has no job {name}"
    return jobs[name]


def _alert_rules() -> list[dict[str, Any]]:
    (alerts,) = load_documents(_PROMETHEUS / "alerts.yml")
    return [rule for group in alerts["groups"] for rule in group["rules"]]


def _kept(job: dict[str, Any], source_label: str) -> str:
    """The regex of the job's `keep` rule on one discovered label."""
    for rule in job["relabel_configs"]:
        if rule.get("action") == "keep" and rule["source_labels"] == [source_label]:
            return str(rule["regex"])
    raise AssertionError(f"{job['job_name']}: no keep rule on {source_label}")


def _prometheus_name(instrument: str, unit: str | None, *, gauge: bool = False) -> str:
    """The name the OpenTelemetry Prometheus exporter gives a counter (or an observable
    gauge), asked of the exporter."""
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    try:
        meter = provider.get_meter("naming")
        if gauge:
            meter.create_observable_gauge(
                instrument, callbacks=[lambda _: [Observation(1)]], unit=unit or ""
            )
        else:
            meter.create_counter(instrument, unit=unit or "").add(1)
        names = {
            sample.name
            for family in registry.collect()
            for sample in family.samples
            if sample.name != "target_info"
        }
    finally:
        provider.shutdown()
    (name,) = names
    return name


def test_local_targets_are_the_runner_metrics_ports() -> None:
    """`lathe up` serves each service's /metrics on the runner's fixed port."""
    host = LatheSettings.model_fields["metrics_host"].default
    targets: dict[ServiceName, str] = {}
    for static in _scrape_job("lathe-local")["static_configs"]:
        service = ServiceName(static["labels"]["service"].replace("-", "_"))
        (targets[service],) = static["targets"]

    assert targets == {service: f"{host}:{port}" for service, port in _METRICS_PORTS.items()}


def test_kubernetes_jobs_select_the_pods_and_ports_of_the_manifests() -> None:
    """Relabel rules keep pods by component label and container port name."""
    services = named(load_directory(BASE), "Deployment").values()
    (collector,) = named(load_directory(_COLLECTOR), "Deployment").values()
    cases = [("lathe-services", "metrics", d) for d in services]
    cases.append(("lathe-otel-collector", "prom-metrics", collector))

    for job_name, port_name, deployment in cases:
        job = _scrape_job(job_name)
        pod = deployment["spec"]["template"]["metadata"]
        assert re.fullmatch(
            _kept(job, _COMPONENT_LABEL), pod["labels"]["app.kubernetes.io/component"]
        )
        assert re.fullmatch(_kept(job, _PORT_NAME_LABEL), port_name)
        port = container_port(only_container(deployment), port_name)
        assert pod["annotations"]["prometheus.io/port"] == str(port)


def test_rule_files_exist() -> None:
    for rule_file in _prometheus()["rule_files"]:
        assert (_PROMETHEUS / rule_file).is_file(), rule_file


def test_alerts_are_actionable() -> None:
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_alerts_select_jobs_prometheus_defines() -> None:
    jobs = {job["job_name"] for job in _prometheus()["scrape_configs"]}

    for rule in _alert_rules():
        assert set(_JOB_SELECTOR.findall(rule["expr"])) <= jobs, rule["alert"]


def test_relay_alert_watches_the_counter_the_relay_exports() -> None:
    match = _COUNTER.search(_RELAY_SOURCE.read_text())
    assert match is not None, "the relay no longer creates its published-events counter"
    exported = _prometheus_name(match["name"], match["unit"])
    (stalled,) = [rule for rule in _alert_rules() if rule["alert"] == "LatheRelayStalled"]

    assert exported in stalled["expr"], f"the relay exports {exported}"


def test_relay_alerts_watch_the_backlog_gauge_the_relay_exports() -> None:
    match = _GAUGE.search(_RELAY_SOURCE.read_text())
    assert match is not None, "the relay no longer creates its backlog gauge"
    exported = _prometheus_name(match["name"], match["unit"], gauge=True)
    relay_alerts = [rule for rule in _alert_rules() if rule["alert"].startswith("LatheRelay")]

    assert {rule["alert"] for rule in relay_alerts} == {"LatheRelayStalled", "LatheRelayBehind"}
    for rule in relay_alerts:
        assert exported in rule["expr"], f"{rule['alert']}: the relay exports {exported}"


def test_inference_alerts_watch_metrics_the_inference_service_exports() -> None:
    exported = {
        _prometheus_name(i.name, i.unit, gauge=not i.counter) for i in inference_metrics.INSTRUMENTS
    }
    inference_alerts = [r for r in _alert_rules() if r["alert"].startswith("LatheInference")]

    assert {r["alert"] for r in inference_alerts} == {
        "LatheInferenceVersionRefused",
        "LatheInferencePredictionLogsDropped",
        "LatheInferenceQueueFull",
    }
    for rule in inference_alerts:
        watched = set(re.findall(r"\blathe_inference_[a-z_]+", rule["expr"]))
        assert watched, rule["alert"]
        assert watched <= exported, f"{rule['alert']}: inference exports {sorted(exported)}"


def test_missing_service_alert_covers_every_service() -> None:
    (missing,) = [rule for rule in _alert_rules() if rule["alert"] == "LatheServiceMissing"]

    for service in ServiceName:
        assert f'service="{service.display_name}"' in missing["expr"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=_PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _collector() -> dict[str, Any]:
    (config,) = load_documents(_COLLECTOR / "collector.yaml")
    return config


def test_collector_pipelines_use_only_configured_components() -> None:
    config = _collector()
    # A connector is the exporter of one pipeline and the receiver of another.
    connectors = set(config.get("connectors", {}))

    for name, pipeline in config["service"]["pipelines"].items():
        for role in ("receivers", "processors", "exporters"):
            defined = set(config.get(role, {}))
            if role != "processors":
                defined |= connectors
            assert set(pipeline.get(role, [])) <= defined, f"pipeline {name}: {role}"
    assert set(config["service"].get("extensions", [])) <= set(config.get("extensions", {}))


def test_services_export_to_the_collector_otlp_grpc_port() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT names the collector Service and its OTLP gRPC port."""
    config_map: Manifest = named(load_directory(BASE), "ConfigMap")[SHARED_CONFIG]
    endpoint = urlparse(config_map["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    grpc_receiver = _collector()["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    collector_service = named(load_directory(_COLLECTOR), "Service")[str(endpoint.hostname)]
    service_ports = {p["name"]: p["port"] for p in collector_service["spec"]["ports"]}

    assert endpoint.port == int(grpc_receiver.rpartition(":")[2])
    assert service_ports["otlp-grpc"] == endpoint.port


def test_collector_reads_the_generated_config_file() -> None:
    (kustomization,) = load_documents(_COLLECTOR / "kustomization.yaml")
    (generator,) = kustomization["configMapGenerator"]
    (deployment,) = named(load_directory(_COLLECTOR), "Deployment").values()
    container = only_container(deployment)
    (mount,) = container["volumeMounts"]
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    config_arg = next(a for a in container["args"] if a.startswith("--config="))

    assert generator["files"] == ["collector.yaml"]
    assert volume["name"] == mount["name"]
    assert volume["configMap"]["name"] == generator["name"]
    assert Path(config_arg.removeprefix("--config=")) == Path(mount["mountPath"]) / "collector.yaml"
