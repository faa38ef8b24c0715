"""The Dockerfile agrees with the project it packages.

Docker cannot run on the development machines, so the image is never built in the test
suite; these checks catch the drift a build would otherwise be the first to notice.
"""

from __future__ import annotations

import re
import tomllib

from libs.config import ServiceName
from libs.platform.runner import _METRICS_PORTS
from tests.infra.manifests import INFRA, K8S, REPO_ROOT, default_port, load_directory, named

_DOCKERFILE = INFRA / "docker" / "Dockerfile"
_PYTHON_IMAGE = re.compile(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)-slim$", re.MULTILINE)
_COPY_FROM_CONTEXT = re.compile(r"^COPY (?!--from)(\S+) ", re.MULTILINE)
_CPU_TORCH_PIN = re.compile(r"^torch==[^+\s]+\+cpu$", re.MULTILINE)


def _dockerfile() -> str:
    return _DOCKERFILE.read_text()


def test_image_python_is_the_project_python() -> None:
    match = _PYTHON_IMAGE.search(_dockerfile())
    assert match is not None, "the Dockerfile must set ARG PYTHON_IMAGE=python:X.Y-slim"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]

    assert f">={match[1]}" in project["requires-python"]


def test_image_copies_paths_that_exist() -> None:
    for source in _COPY_FROM_CONTEXT.findall(_dockerfile()):
        assert (REPO_ROOT / source).exists(), source


def test_torch_pin_is_the_cpu_build_the_dockerfile_rewrites() -> None:
    """The CUDA build rewrites `torch==X+cpu`; another pin shape would silently stay CPU."""
    lock = (REPO_ROOT / "requirements" / "lock.txt").read_text()

    assert len(_CPU_TORCH_PIN.findall(lock)) == 1


def test_default_command_runs_a_service_module() -> None:
    match = re.search(r'^CMD \["python", "-m", "services\.(\w+)"\]$', _dockerfile(), re.MULTILINE)
    assert match is not None

    assert ServiceName(match[1])
    assert (REPO_ROOT / "services" / match[1] / "__main__.py").is_file()


def test_image_user_is_the_pods_user() -> None:
    match = re.search(r"^USER (\d+):(\d+)$", _dockerfile(), re.MULTILINE)
    assert match is not None, "run as a numeric non-root user (runAsNonRoot checks the uid)"

    for deployment in named(load_directory(K8S / "base"), "Deployment").values():
        pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (
            int(match[1]),
            int(match[2]),
        )


def test_exposed_ports_are_the_service_and_metrics_ports() -> None:
    match = re.search(r"^EXPOSE (.+)$", _dockerfile(), re.MULTILINE)
    assert match is not None
    expected = {default_port(s) for s in ServiceName} | set(_METRICS_PORTS.values())

    assert {int(port) for port in match[1].split()} == expected
