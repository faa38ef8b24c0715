"""Reading the deployment files under ``infra/`` for the consistency tests.

The tests compare these files with the code they deploy (settings, ports, modules,
metric names), so that a change on one side that forgets the other fails here rather
than in a cluster.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from libs.config import LatheSettings, ServiceName
from services.inference.config import InferenceSettings
from services.trainer.config import TrainerSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
K8S = INFRA / "k8s"
BASE = K8S / "base"
OVERLAYS = ("base", "overlays/dev", "overlays/gpu")
SHARED_CONFIG = "lathe-config"
SECRET = "lathe-secrets"

Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of one file."""
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def load_directory(directory: Path) -> list[Manifest]:
    """The manifests of a kustomization directory, as written (no kustomize applied)."""
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_documents(path)
    ]


@functools.cache
def kustomize(directory: Path) -> list[Manifest]:
    """What ``kubectl kustomize`` renders: what a cluster would actually receive.

    Rendered once per directory and run; callers must not modify the result.
    """
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is needed to render kustomizations"
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, f"kubectl kustomize {directory}:\n{rendered.stderr}"
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def named(manifests: Iterable[Manifest], kind: str) -> dict[str, Manifest]:
    """The manifests of one kind, by metadata.name."""
    return {doc["metadata"]["name"]: doc for doc in manifests if doc.get("kind") == kind}


def only_container(workload: Manifest) -> dict[str, Any]:
    """The single container of a Deployment or Job (each Lathe pod runs one)."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: expected one container"
    return containers[0]


def container_port(container: dict[str, Any], name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name!r}"
    return int(ports[name])


def effective_env(
    container: dict[str, Any], config_maps: dict[str, Manifest]
) -> dict[str, str | None]:
    """The container's environment: envFrom ConfigMaps, then ``env`` (which wins).

    Values that come from a Secret or the downward API are None: known only in a cluster.
    """
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is not None:
            assert ref["name"] in config_maps, f"envFrom names a missing ConfigMap {ref['name']}"
            env.update(config_maps[ref["name"]]["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Env var name -> its secretKeyRef, for the variables read from Secrets."""
    return {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in container.get("env", [])
        if "secretKeyRef" in var.get("valueFrom", {})
    }


def default_port(service: ServiceName) -> int:
    """The port a service listens on by default (LatheSettings, not the environment)."""
    address = LatheSettings.model_fields[f"{service.value}_addr"].default
    return int(str(address).rpartition(":")[2])


def settings_env_names() -> set[str]:
    """Every environment variable the settings read (prefix + field name): the shared
    LatheSettings and the services' own (LATHE_INFERENCE_*, LATHE_TRAINER_*)."""
    names: set[str] = set()
    for settings in (LatheSettings, InferenceSettings, TrainerSettings):
        prefix = str(settings.model_config.get("env_prefix", ""))
        names |= {f"{prefix}{field}".upper() for field in settings.model_fields}
    return names


def kustomization_dirs() -> Iterator[Path]:
    """Directories under infra/ with a kustomization (infra/bazel is not deployment config)."""
    for path in sorted(INFRA.rglob("kustomization.yaml")):
        if INFRA / "bazel" not in path.parents:
            yield path.parent
