"""The Kubernetes launcher: the same worker command as an indexed Job with torchrun rendezvous.

``render`` turns an attempt into two manifests: a headless Service (pods find pod 0, the
c10d rendezvous host, by DNS) and an indexed Job with one pod per node, each running
``torchrun --nnodes=N --nproc-per-node=P --rdzv-endpoint=<job>-0.<job>:29400`` and the
worker module with the attempt's plan (on the trainer's artifact root, which the pods must
mount from shared storage). ``backoffLimit: 0``: a failed pod fails the attempt and the
trainer resumes from the last checkpoint with a new Job, exactly as it does locally.

Applying needs the ``kubernetes`` Python client and a configured cluster. The client is not
part of this platform's pinned environment, so here ``KubernetesLauncher.start`` refuses
with FAILED_PRECONDITION naming the rendered manifest; the rendering itself is tested.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import yaml

from libs.errors import FailedPrecondition
from services.trainer.launch.base import worker_command

RENDEZVOUS_PORT = 29400
LABELS = {"app.kubernetes.io/name": "trainer-worker", "app.kubernetes.io/part-of": "lathe"}


def job_name(attempt_id: str) -> str:
    return f"train-{attempt_id.replace('-', '')[:20]}"


def render(
    *,
    job_id: str,
    attempt_id: str,
    plan_path: str,
    nodes: int,
    processes_per_node: int,
    image: str,
    namespace: str,
    artifact_claim: str = "lathe-trainer-artifacts",
    gpus_per_node: int = 0,
    cpu: str = "4",
    memory: str = "8Gi",
) -> list[dict[str, Any]]:
    name = job_name(attempt_id)
    command = worker_command(
        job_id=job_id,
        attempt_id=attempt_id,
        plan_path=plan_path,
        processes=processes_per_node,
        nnodes=nodes,
        rendezvous=f"{name}-0.{name}:{RENDEZVOUS_PORT}",
        python="python",
    )
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus_per_node:
        limits["nvidia.com/gpu"] = gpus_per_node
    labels = {**LABELS, "lathe.dev/training-job": job_id, "lathe.dev/attempt": attempt_id}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "subdomain": name,
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                    "containers": [
                        {
                            "name": "worker",
                            "image": image,
                            "command": command,
                            "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
                            "ports": [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}],
                            "resources": {"requests": dict(limits), "limits": limits},
                            "volumeMounts": [
                                {"name": "artifacts", "mountPath": str(Path(plan_path).parents[3])},
                                {"name": "dshm", "mountPath": "/dev/shm"},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "artifacts",
                            "persistentVolumeClaim": {"claimName": artifact_claim},
                        },
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
                    ],
                },
            },
        },
    }
    return [service, job]


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(manifests, sort_keys=False)


class KubernetesLauncher:
    name = "kubernetes"

    def __init__(self, *, namespace: str, image: str) -> None:
        self._namespace = namespace
        self._image = image

    async def start(
        self, *, job_id: str, attempt_id: str, plan_path: Path, processes: int, threads: int
    ) -> Any:
        manifest = plan_path.parent / "kubernetes.yaml"
        manifest.write_text(
            to_yaml(
                render(
                    job_id=job_id,
                    attempt_id=attempt_id,
                    plan_path=str(plan_path),
                    nodes=processes,
                    processes_per_node=1,
                    image=self._image,
                    namespace=self._namespace,
                )
            )
        )
        if importlib.util.find_spec("kubernetes") is None:
            raise FailedPrecondition(
                "resources.launcher is 'kubernetes' but the kubernetes Python client is not "
                f"installed in the trainer's image; the attempt's manifests are at {manifest} "
                "(kubectl apply -f them, or use launcher 'local')"
            )
        raise FailedPrecondition(  # pragma: no cover - needs a cluster
            "applying TrainJobs needs a configured cluster (in-cluster or KUBECONFIG); "
            f"the manifests are at {manifest}"
        )
