"""The Kubernetes launcher renders the same worker command as an indexed Job."""

from __future__ import annotations

import yaml

from services.trainer.launch.base import worker_command
from services.trainer.launch.kubernetes import job_name, render, to_yaml


def test_an_attempt_renders_as_a_headless_service_and_an_indexed_job() -> None:
    manifests = render(
        job_id="j1",
        attempt_id="0190-abc",
        plan_path="/var/lib/lathe/trainer/attempts/j1/0190-abc/plan.json",
        nodes=3,
        processes_per_node=2,
        image="lathe:1",
        namespace="ml",
        gpus_per_node=2,
    )
    service, job = yaml.safe_load_all(to_yaml(manifests))
    name = job_name("0190-abc")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "ml"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name and pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--nnodes=3" in command and "--nproc-per-node=2" in command
    assert f"--rdzv-endpoint={name}-0.{name}:29400" in command and "--rdzv-backend=c10d" in command
    local = worker_command(job_id="j1", attempt_id="0190-abc", plan_path="/p", processes=2)
    tail = local[local.index("-m", 2) :]
    assert command[command.index("-m", 2) :][:2] == tail[:2]  # the same worker module
    assert "--attempt-id=0190-abc" in command and "--job-id=j1" in command
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["volumeMounts"][0]["mountPath"] == "/var/lib/lathe/trainer"
