"""The by-hand Kubernetes template runs the worker the trainer's launchers run.

Here, not in tests/unit, because it reads infra/ (outside the unit tests' Bazel data).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from services.trainer.launch.base import WORKER_MODULE, worker_command

_TEMPLATE = Path(__file__).parents[2] / "infra" / "k8s" / "trainer" / "torchrun-job.yaml"


def test_the_by_hand_template_runs_the_real_worker() -> None:
    """infra/k8s/trainer/torchrun-job.yaml starts what the launcher starts, with the flags
    the worker reads (a placeholder module would only fail in the cluster)."""
    documents = list(yaml.safe_load_all(_TEMPLATE.read_text()))
    (job,) = [d for d in documents if d["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"] + container["args"]
    launcher = worker_command(job_id="j", attempt_id="a", plan_path="/p", processes=1)

    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    assert command[command.index("-m", 2) + 1] == WORKER_MODULE
    assert importlib.util.find_spec(WORKER_MODULE) is not None
    flags = {arg.split("=", 1)[0] for arg in command if arg.startswith("--")}
    assert {"--plan", "--attempt-id", "--job-id", "--max-restarts"} <= flags
    assert "--max-restarts=0" in command and "--max-restarts=0" in launcher
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    plan = next(e["value"] for e in container["env"] if e["name"] == "PLAN_PATH")
    artifacts = mounts["/var/lib/lathe/trainer"]
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == artifacts)
    assert plan.startswith("/var/lib/lathe/trainer/attempts/")
    assert "persistentVolumeClaim" in volume, "the plan is on the trainer's shared artifact root"
