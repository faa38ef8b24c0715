"""The Grafana dashboards query what the services and the collector export.

Caught here: a panel on a metric name the code no longer exports (it would draw nothing,
silently), a span name that no RPC has, a service name no service uses, a query
Prometheus cannot parse, panels that overlap or share an id.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.config import ServiceName
from libs.telemetry.pod_metrics import UP_METRIC
from services.inference.app import metrics as inference_metrics
from tests.infra.manifests import INFRA, load_documents
from tests.infra.test_observability import _prometheus_name

_DASHBOARDS = INFRA / "grafana" / "dashboards"
_COLLECTOR = INFRA / "otel" / "collector.yaml"
_METRIC = re.compile(r"\b(?:lathe|traces)_[a-z0-9_]+\b")
_LABEL_MATCHER = re.compile(r'\b(?P<label>[a-z_]+)\s*(?P<op>=~|=)\s*"(?P<value>[^"]*)"')
_PROMETHEUS_UNITS = {"ms": "milliseconds", "s": "seconds"}
_GRID_COLUMNS = 24


def _dashboards() -> list[Path]:
    return sorted(_DASHBOARDS.glob("*.json"))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every target, where = "<title> <refId>"."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"{panel['title']} {target['refId']}", target["expr"]


def _span_metric_names() -> set[str]:
    """What the collector's spanmetrics connector exports to Prometheus."""
    (collector,) = load_documents(_COLLECTOR)
    spanmetrics = collector["connectors"]["spanmetrics"]
    prefix = spanmetrics["namespace"].replace(".", "_")
    unit = _PROMETHEUS_UNITS[spanmetrics["histogram"]["unit"]]
    duration = f"{prefix}_duration_{unit}"
    return {
        f"{prefix}_calls_total",
        f"{duration}_bucket",
        f"{duration}_sum",
        f"{duration}_count",
    }


def _exported_metric_names() -> set[str]:
    exported = {
        _prometheus_name(i.name, i.unit, gauge=not i.counter) for i in inference_metrics.INSTRUMENTS
    }
    exported.add(_prometheus_name("lathe.relay.backlog", "{event}", gauge=True))
    exported.add(_prometheus_name("lathe.relay.events_published", "{event}"))
    exported.add(UP_METRIC)
    return exported | _span_metric_names()


def _rpc_span_names() -> set[str]:
    """The SERVER spans' names: "/package.Service/Method" of every Lathe RPC."""
    names = set()
    for service in ServiceName:
        module = importlib.import_module(f"lathe.{service.value}.v1.service_pb2")
        for descriptor in module.DESCRIPTOR.services_by_name.values():
            names |= {f"/{descriptor.full_name}/{method.name}" for method in descriptor.methods}
    return names


def test_there_is_an_inference_dashboard() -> None:
    assert _DASHBOARDS / "lathe-inference.json" in _dashboards()


@pytest.mark.parametrize("path", _dashboards(), ids=lambda p: p.name)
def test_dashboard_queries_metrics_that_are_exported(path: Path) -> None:
    exported = _exported_metric_names()
    for where, expr in _queries(json.loads(path.read_text())):
        queried = set(_METRIC.findall(expr))
        assert queried, f"{where}: no Lathe or span metric in {expr}"
        assert queried <= exported, f"{where}: not exported: {sorted(queried - exported)}"


@pytest.mark.parametrize("path", _dashboards(), ids=lambda p: p.name)
def test_dashboard_label_values_name_real_services_and_rpcs(path: Path) -> None:
    services = {service.display_name for service in ServiceName}
    span_names = _rpc_span_names()
    for where, expr in _queries(json.loads(path.read_text())):
        for matcher in _LABEL_MATCHER.finditer(expr):
            label, value = matcher["label"], matcher["value"]
            if matcher["op"] == "=~":
                known = services if label in {"service", "service_name"} else span_names
                matched = {name for name in known if re.fullmatch(value, name)}
                if label in {"service", "service_name", "span_name"}:
                    assert matched, f"{where}: {label}=~{value!r} matches nothing"
                    alternatives = value.count("|") + 1
                    assert len(matched) >= alternatives, f"{where}: {value!r} has a dead branch"
            elif label in {"service", "service_name"}:
                assert value in services, f"{where}: no service is called {value!r}"
            elif label == "span_name":
                assert value in span_names, f"{where}: no RPC is called {value!r}"


@pytest.mark.parametrize("path", _dashboards(), ids=lambda p: p.name)
def test_dashboard_layout_and_datasource(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    cells: dict[tuple[int, int], str] = {}

    assert dashboard["uid"] and dashboard["title"]
    assert variables["datasource"]["type"] == "datasource"
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= _GRID_COLUMNS, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert panel["description"], f"{panel['title']}: say what it shows and what to do"
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_provisioning_loads_the_dashboards_folder() -> None:
    provisioning = INFRA / "grafana" / "provisioning" / "dashboards" / "lathe.yaml"
    (provider,) = yaml.safe_load(provisioning.read_text())["providers"]
    readme = (INFRA / "README.md").read_text()

    # infra/README.md mounts the dashboards folder where the provider reads it.
    assert f"{_DASHBOARDS.relative_to(INFRA.parent)}:{provider['options']['path']}" in readme


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize("path", _dashboards(), ids=lambda p: p.name)
def test_dashboard_queries_parse(path: Path, tmp_path: Path) -> None:
    """Each query as a recording rule, so `promtool check rules` parses its PromQL."""
    rules = [
        {
            "record": f"dashboard:query_{number}",
            # Grafana's interval variables are substituted before Prometheus sees a query.
            "expr": expr.replace("$__rate_interval", "5m").replace("$__interval", "1m"),
        }
        for number, (_, expr) in enumerate(_queries(json.loads(path.read_text())))
    ]
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}))

    result = subprocess.run(
        ["promtool", "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
