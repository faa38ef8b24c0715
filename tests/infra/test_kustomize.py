"""The kustomizations build, and each overlay changes what it says and nothing else.

The rendering tests need ``kubectl`` (its built-in kustomize) and are skipped without it;
the file-reference checks need nothing but the files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from libs.config import ServiceName
from tests.infra.manifests import (
    INFRA,
    K8S,
    OVERLAYS,
    SECRET,
    Manifest,
    container_port,
    default_port,
    kustomization_dirs,
    kustomize,
    load_directory,
    load_documents,
    named,
    only_container,
    secret_refs,
)

_KUSTOMIZATIONS = list(kustomization_dirs())
_NOT_MANIFESTS = {"kustomization.yaml", "README.md"}
_SECRET_EXAMPLE = K8S / "secret.example.yaml"
_TORCHRUN_JOB = K8S / "trainer" / "torchrun-job.yaml"
_GPU = "nvidia.com/gpu"

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with built-in kustomize) not installed"
)


def _label(directory: Path) -> str:
    return str(directory.relative_to(INFRA))


def _references(kustomization: dict[str, Any]) -> list[str]:
    """Every local path a kustomization reads: resources, patches, generator inputs."""
    references = [*kustomization.get("resources", []), *kustomization.get("components", [])]
    references += kustomization.get("patchesStrategicMerge", [])
    for patch in [*kustomization.get("patches", []), *kustomization.get("patchesJson6902", [])]:
        if "path" in patch:
            references.append(patch["path"])
    generators = [
        *kustomization.get("configMapGenerator", []),
        *kustomization.get("secretGenerator", []),
    ]
    for generator in generators:
        # A files entry is "path" or "key=path".
        references += [entry.rpartition("=")[2] for entry in generator.get("files", [])]
        references += generator.get("envs", [])
    return references


def _is_kustomization(directory: Path) -> bool:
    return (directory / "kustomization.yaml").is_file()


@pytest.mark.parametrize("directory", _KUSTOMIZATIONS, ids=_label)
def test_kustomization_lists_only_files_that_exist(directory: Path) -> None:
    (kustomization,) = load_documents(directory / "kustomization.yaml")

    for reference in _references(kustomization):
        assert "://" not in reference, f"{reference}: remote resources make builds unrepeatable"
        target = directory / reference
        assert target.is_file() or _is_kustomization(target), f"{_label(directory)}: {reference}"


@pytest.mark.parametrize("directory", _KUSTOMIZATIONS, ids=_label)
def test_kustomization_lists_every_manifest_beside_it(directory: Path) -> None:
    """A file left out of its kustomization is silently never deployed."""
    (kustomization,) = load_documents(directory / "kustomization.yaml")
    listed = {(directory / reference).resolve() for reference in _references(kustomization)}
    beside = {p.resolve() for p in directory.iterdir() if p.is_file()}

    unlisted = sorted(p.name for p in beside - listed if p.name not in _NOT_MANIFESTS)
    assert not unlisted, f"{_label(directory)}: not in kustomization.yaml: {unlisted}"


def test_secret_example_matches_what_the_pods_read() -> None:
    """The example has every key the Deployments read, and only placeholder values."""
    (secret,) = load_documents(_SECRET_EXAMPLE)
    read = {
        ref["key"]
        for deployment in named(load_directory(K8S / "base"), "Deployment").values()
        for ref in secret_refs(only_container(deployment)).values()
        if ref["name"] == SECRET
    }

    assert secret["metadata"]["name"] == SECRET
    assert set(secret["stringData"]) == read
    assert all("CHANGE_ME" in value for value in secret["stringData"].values())


def test_secret_example_is_never_applied() -> None:
    """Applying the manifests must not overwrite the real Secret with placeholders."""
    for directory in _KUSTOMIZATIONS:
        (kustomization,) = load_documents(directory / "kustomization.yaml")
        resolved = {(directory / r).resolve() for r in _references(kustomization)}
        assert _SECRET_EXAMPLE.resolve() not in resolved, _label(directory)


def test_torchrun_job_template_is_consistent() -> None:
    """One pod per node, each finding pod 0 through the headless Service."""
    documents = load_documents(_TORCHRUN_JOB)
    (job,) = named(documents, "Job").values()
    (service,) = named(documents, "Service").values()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    args = dict(
        arg.removeprefix("--").split("=", 1) for arg in only_container(job)["args"] if "=" in arg
    )
    job_name = job["metadata"]["name"]

    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(args["nnodes"])
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job_name}
    assert args["master-addr"] == f"{job_name}-0.{pod['subdomain']}"
    assert container_port(only_container(job), "rendezvous") == int(args["master-port"])


@needs_kubectl
@pytest.mark.parametrize("directory", _KUSTOMIZATIONS, ids=_label)
def test_kustomization_renders(directory: Path) -> None:
    assert kustomize(directory), f"{_label(directory)} renders nothing"


def _lathe_deployments(manifests: list[Manifest]) -> dict[ServiceName, Manifest]:
    deployments = named(manifests, "Deployment")
    return {service: deployments[service.display_name] for service in ServiceName}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_keeps_every_service_runnable(overlay: str) -> None:
    """Patches must not lose a service, its command, its ports, its probes or its token."""
    rendered = kustomize(K8S / overlay)

    for service, deployment in _lathe_deployments(rendered).items():
        container = only_container(deployment)
        assert container["command"][-1] == f"services.{service.value}"
        assert container_port(container, "grpc") == default_port(service)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == default_port(service)
        token = secret_refs(container).get("LATHE_AUTH_TOKEN", {"optional": True})
        assert not token.get("optional", False), f"{service}: LATHE_AUTH_TOKEN not required"
    namespaced = [doc for doc in rendered if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {"lathe"}


@needs_kubectl
def test_dev_overlay_runs_one_replica_each() -> None:
    rendered = kustomize(K8S / "overlays/dev")

    for service, deployment in _lathe_deployments(rendered).items():
        assert deployment["spec"]["replicas"] == 1, service
    for claim in named(rendered, "PersistentVolumeClaim").values():
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@needs_kubectl
def test_gpu_overlay_gives_only_inference_a_gpu() -> None:
    rendered = _lathe_deployments(kustomize(K8S / "overlays/gpu"))
    base = _lathe_deployments(kustomize(K8S / "base"))

    for service, deployment in rendered.items():
        pod = deployment["spec"]["template"]["spec"]
        gpus = only_container(deployment)["resources"]["limits"].get(_GPU, 0)
        if service is ServiceName.INFERENCE:
            assert int(gpus) >= 1
            assert pod["nodeSelector"], "GPU pods must land on GPU nodes"
            assert only_container(deployment)["image"] != only_container(base[service])["image"]
        else:
            assert deployment == base[service], f"{service} changed by the GPU overlay"
