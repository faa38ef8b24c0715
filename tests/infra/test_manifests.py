"""The service manifests in infra/k8s/base agree with the code they deploy.

Each test names the drift it catches: a service without a Deployment, a module, port or
environment variable the code no longer has, a probe on the wrong port, a grace period
shorter than the drain. Expected values come from the code (LatheSettings, ServiceName,
the local runner), never from a copy of them here.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any

import pytest

from libs.config import LatheSettings, ServiceName
from libs.grpckit.server import LIVENESS_SERVICE, _is_loopback
from libs.platform.runner import _METRICS_PORTS
from services.trainer.config import TrainerSettings
from services.trainer.launch.kubernetes import render as render_training_job
from tests.infra.manifests import (
    BASE,
    INFRA,
    REPO_ROOT,
    SECRET,
    SHARED_CONFIG,
    Manifest,
    container_port,
    default_port,
    effective_env,
    load_directory,
    load_documents,
    named,
    only_container,
    secret_refs,
    settings_env_names,
)

_SERVICES = list(ServiceName)
_PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
_SECRET_PLACEHOLDERS = {
    "LATHE_DATABASE_URL": "postgresql://lathe@postgres:5432/lathe",
    "LATHE_AUTH_TOKEN": "placeholder",
}
_SHUTDOWN_CLEANUP_S = 10.0
"""After the RPC drain: background tasks stop, NATS drains, the Postgres pool closes."""
_DEPENDENCY_FAILOVER_S = 60
"""A Postgres or NATS failover the liveness probe must ride out (health is NOT_SERVING)."""
_LATHE_VARIABLE = re.compile(r"\bLATHE_[A-Z][A-Z0-9_]*")
_OWNED_DIRS = ("k8s", "otel", "prometheus", "docker")


@pytest.fixture(scope="module")
def base() -> list[Manifest]:
    return load_directory(BASE)


@pytest.fixture(scope="module")
def config_maps(base: list[Manifest]) -> dict[str, Manifest]:
    return named(base, "ConfigMap")


def _deployment(manifests: list[Manifest], service: ServiceName) -> Manifest:
    deployments = named(manifests, "Deployment")
    assert service.display_name in deployments, f"no Deployment {service.display_name}"
    return deployments[service.display_name]


def _pod_settings(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> LatheSettings:
    """LatheSettings as a pod with this environment builds them (Secrets: placeholders)."""
    for name in list(os.environ):
        if name.startswith("LATHE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("LATHE_"):
            chosen = value if value is not None else _SECRET_PLACEHOLDERS.get(name)
            assert chosen is not None, f"{name} comes from a Secret the tests do not know"
            monkeypatch.setenv(name, chosen)
    return LatheSettings()


def _prestop_sleep_s(container: dict[str, Any]) -> float:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not command:
        return 0.0
    assert command[0] == "sleep", f"unexpected preStop {command}"
    return float(command[1])


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_every_service_has_a_deployment_service_and_budget(
    base: list[Manifest], service: ServiceName
) -> None:
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        assert service.display_name in named(base, kind), f"{service}: no {kind}"


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_deployment_runs_the_service_module(base: list[Manifest], service: ServiceName) -> None:
    container = only_container(_deployment(base, service))
    command = [*container.get("command", []), *container.get("args", [])]

    assert command == ["python", "-m", f"services.{service.value}"]
    assert (REPO_ROOT / "services" / service.value / "__main__.py").is_file()


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_service_listens_and_is_probed_on_its_default_port(
    base: list[Manifest],
    config_maps: dict[str, Manifest],
    service: ServiceName,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = default_port(service)
    container = only_container(_deployment(base, service))
    settings = _pod_settings(effective_env(container, config_maps), monkeypatch)

    assert settings.service_addr(service) == f"0.0.0.0:{port}"
    assert container_port(container, "grpc") == port
    for probe in _PROBES:
        assert container[probe]["grpc"]["port"] == port, f"{probe} must be a gRPC probe"
    k8s_service = named(base, "Service")[service.display_name]
    assert [(p["port"], p["targetPort"]) for p in k8s_service["spec"]["ports"]] == [(port, "grpc")]


def test_clients_dial_the_kubernetes_services(
    base: list[Manifest], config_maps: dict[str, Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared ConfigMap's addresses are what other pods dial: existing Services."""
    settings = _pod_settings(config_maps[SHARED_CONFIG]["data"], monkeypatch)
    services = named(base, "Service")

    for service in _SERVICES:
        host, _, port = settings.service_addr(service).rpartition(":")
        assert host in services, f"{service}: no Service {host!r} to dial"
        assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_metrics_are_served_on_the_scraped_port(
    base: list[Manifest],
    config_maps: dict[str, Manifest],
    service: ServiceName,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/metrics listens on the pod IP, on the port the annotations tell Prometheus."""
    deployment = _deployment(base, service)
    container = only_container(deployment)
    settings = _pod_settings(effective_env(container, config_maps), monkeypatch)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]

    assert settings.metrics_host == "0.0.0.0"
    assert annotations["prometheus.io/scrape"] == "true"
    assert settings.metrics_port == int(annotations["prometheus.io/port"])
    assert settings.metrics_port == container_port(container, "metrics")
    # The same port as under `lathe up`, so one number per service everywhere.
    assert settings.metrics_port == _METRICS_PORTS[service]


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_termination_grace_covers_the_drain(
    base: list[Manifest],
    config_maps: dict[str, Manifest],
    service: ServiceName,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL must not arrive while in-flight calls are still draining."""
    deployment = _deployment(base, service)
    container = only_container(deployment)
    settings = _pod_settings(effective_env(container, config_maps), monkeypatch)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    default_drain = LatheSettings.model_fields["shutdown_grace_s"].default
    assert grace > default_drain
    assert grace >= _prestop_sleep_s(container) + settings.shutdown_grace_s + _SHUTDOWN_CLEANUP_S


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_liveness_ignores_dependency_outages(base: list[Manifest], service: ServiceName) -> None:
    """Readiness goes NOT_SERVING while Postgres is down; restarting would not help."""
    container = only_container(_deployment(base, service))
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]

    assert liveness["grpc"]["service"] == LIVENESS_SERVICE
    assert readiness["grpc"].get("service", "") != LIVENESS_SERVICE
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= _DEPENDENCY_FAILOVER_S


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_pods_run_non_root_on_a_read_only_root(
    base: list[Manifest],
    config_maps: dict[str, Manifest],
    service: ServiceName,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pod = _deployment(base, service)["spec"]["template"]["spec"]
    container = only_container(_deployment(base, service))
    settings = _pod_settings(effective_env(container, config_maps), monkeypatch)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
    assert str(settings.home) in writable, "LATHE_HOME must be a writable emptyDir"
    assert "/tmp" in writable


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_resources_have_requests_and_limits(base: list[Manifest], service: ServiceName) -> None:
    resources = only_container(_deployment(base, service))["resources"]

    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[bound]), f"{bound} needs cpu and memory"


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_selectors_match_the_pods(base: list[Manifest], service: ServiceName) -> None:
    deployment = _deployment(base, service)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"].items()
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": named(base, "Service")[service.display_name]["spec"]["selector"],
        "PodDisruptionBudget": named(base, "PodDisruptionBudget")[service.display_name]["spec"][
            "selector"
        ]["matchLabels"],
    }

    for kind, selector in selectors.items():
        assert selector.items() <= pod_labels, f"{kind} {service.display_name} selects no pod"


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_stateless_services_run_two_replicas(base: list[Manifest], service: ServiceName) -> None:
    assert _deployment(base, service)["spec"]["replicas"] == 2


def _owned_text_files() -> list[Path]:
    files = [INFRA / "README.md"]
    for directory in _OWNED_DIRS:
        files += [path for path in sorted((INFRA / directory).rglob("*")) if path.is_file()]
    return [path for path in files if path.exists()]


def test_lathe_variables_are_settings_fields() -> None:
    """A LATHE_* name the settings do not read is silently ignored (extra="ignore")."""
    known = settings_env_names()
    unknown = {
        f"{path.relative_to(REPO_ROOT)}: {name}"
        for path in _owned_text_files()
        for name in _LATHE_VARIABLE.findall(path.read_text())
        if name not in known
    }

    assert not unknown, f"not fields of LatheSettings: {sorted(unknown)}"


def _claim_holding(deployment: Manifest, path: Path) -> str | None:
    """The PersistentVolumeClaim the Deployment's container has ``path`` on, if any."""
    pod = deployment["spec"]["template"]["spec"]
    claims = {
        volume["name"]: volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    mounts = sorted(  # the deepest mount that holds the path is where it lives
        only_container(deployment)["volumeMounts"], key=lambda m: len(m["mountPath"])
    )
    holding = [m for m in mounts if path.is_relative_to(m["mountPath"])]
    return claims.get(holding[-1]["name"]) if holding else None


def test_model_registry_artifacts_are_shared_by_its_replicas(
    base: list[Manifest], config_maps: dict[str, Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob uploaded through one replica must be readable through the others."""
    deployment = _deployment(base, ServiceName.MODEL_REGISTRY)
    settings = _pod_settings(effective_env(only_container(deployment), config_maps), monkeypatch)
    claim_name = _claim_holding(deployment, settings.artifact_dir)

    assert claim_name, f"artifact_dir {settings.artifact_dir} is not on a PersistentVolumeClaim"
    claim = named(base, "PersistentVolumeClaim")[claim_name]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


def test_trainer_artifacts_are_on_the_claim_training_jobs_mount(
    base: list[Manifest], config_maps: dict[str, Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training pods on other nodes read the plan and dataset the trainer wrote and write
    the checkpoints and progress it follows: one shared volume, at the same path."""
    deployment = _deployment(base, ServiceName.TRAINER)
    env = effective_env(only_container(deployment), config_maps)
    settings = _pod_settings(env, monkeypatch)
    trainer = TrainerSettings()  # LATHE_TRAINER_* from the same pod environment
    artifact_root = trainer.artifact_root or settings.home / "trainer"  # as services/trainer
    claim_name = _claim_holding(deployment, artifact_root)

    assert claim_name, f"the trainer's artifact root {artifact_root} is not on a claim"
    claim = named(base, "PersistentVolumeClaim")[claim_name]
    assert "ReadWriteMany" in claim["spec"]["accessModes"], "training pods run on other nodes"
    # The Jobs the trainer renders, and the by-hand template, mount that claim at that path.
    assert inspect.signature(render_training_job).parameters["artifact_claim"].default == (
        claim_name
    )
    template = load_documents(INFRA / "k8s" / "trainer" / "torchrun-job.yaml")
    (job,) = named(template, "Job").values()
    assert _claim_holding(job, artifact_root / "attempts") == claim_name


@pytest.mark.parametrize("service", _SERVICES, ids=str)
def test_every_service_requires_an_auth_token(
    base: list[Manifest],
    config_maps: dict[str, Manifest],
    service: ServiceName,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service listening beyond loopback refuses to start without LATHE_AUTH_TOKEN (unless
    LATHE_INSECURE): with an optional key a missing token would crash-loop every pod."""
    container = only_container(_deployment(base, service))
    settings = _pod_settings(effective_env(container, config_maps), monkeypatch)
    token = secret_refs(container).get("LATHE_AUTH_TOKEN")

    assert not _is_loopback(settings.service_addr(service)), "then no token would be needed"
    assert token is not None, "LATHE_AUTH_TOKEN must come from the Secret"
    assert (token["name"], token["key"]) == (SECRET, "LATHE_AUTH_TOKEN")
    assert token.get("optional", False) is False, "the token must be required"
    assert settings.insecure is False, "LATHE_INSECURE would open mutations to the cluster"
