"""Step: the trainer service trains the models (SubmitTrainingJob), live
(WatchTrainingJob), and registers exactly one version per job with its lineage.

``JOBS`` lists what a run trains, by role: the FT-Transformer ``champion`` goes to
production, the MLP ``challenger`` becomes the canary, the ``sequence`` model (a
sequence transformer over each loan's last payments, the feature store's ``LAST_N``) is
trained and registered beside them. Another model is one more ``JobPlan`` here, with its
spec file under ``examples/jobs/``; later steps find it in ``DemoRun.trained`` by its role.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

import libs
from lathe.model_registry.v1 import message_pb2 as reg
from lathe.model_registry.v1 import request_response_pb2 as reg_rr
from lathe.trainer.v1 import message_pb2 as tm
from libs.cli.demo.context import ACTOR, DemoRun, Step, TrainedVersion
from libs.cli.train import describe_event, state_name
from libs.sdk.trainer import load_spec

JOB_SPECS = Path(libs.__file__).resolve().parent.parent / "examples/jobs"
AUC_GATE = 0.60


@dataclass(frozen=True)
class JobPlan:
    role: str
    spec_file: str
    """Under ``examples/jobs/``."""


JOBS: tuple[JobPlan, ...] = (
    JobPlan("champion", "underwriting_ft_transformer.yaml"),
    JobPlan("challenger", "underwriting_mlp.yaml"),
    JobPlan("sequence", "underwriting_sequence_transformer.yaml"),
)

POLICY = reg.PromotionPolicy(
    protected_aliases=[
        reg.ProtectedAlias(
            alias="production",
            gates=[
                reg.MetricGate(
                    metric="auc", comparison=reg.COMPARISON_GREATER_OR_EQUAL, threshold=AUC_GATE
                )
            ],
            require_approval=True,
        )
    ]
)


async def train(run: DemoRun) -> None:
    await run.c.registry.CreateModel(
        reg_rr.CreateModelRequest(
            name=run.model_name,
            owner="underwriting-ml",
            description="Probability that a Lending Club loan goes bad",
            tags={"domain": "underwriting"},
            policy=POLICY,
        ),
        metadata=[("lathe-actor", ACTOR)],
    )
    run.console.print(
        f"model [bold]{run.model_name}[/bold]: production needs auc >= {AUC_GATE} and a "
        "second person's approval"
    )
    submitted = []
    for plan in JOBS:
        spec = load_spec(JOB_SPECS / plan.spec_file)
        spec.model_name = run.model_name
        assert run.validation_start is not None
        spec.split.validation_start.FromDatetime(run.validation_start)
        spec.optimization.epochs = run.options.epochs
        job = await run.c.trainer.submit(spec)
        run.console.print(
            f"SubmitTrainingJob({plan.spec_file}) -> job [bold]{job.job_id}[/bold] "
            f"({spec.model.family}, {spec.optimization.epochs} epochs)"
        )
        submitted.append((plan, job.job_id, spec.model.family, time.monotonic()))

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=run.console,
    ) as progress:
        results = await asyncio.gather(
            *(
                _follow(run, progress, plan, job_id, family, started)
                for plan, job_id, family, started in submitted
            )
        )
    for result in results:
        run.trained[result.role] = result
    versions = (
        await run.c.registry.ListModelVersions(
            reg_rr.ListModelVersionsRequest(model_name=run.model_name, page_size=100)
        )
    ).model_versions
    per_job = Counter(v.lineage.training_job_id for v in versions)
    run.console.print(
        f"registry: {len(versions)} versions of {run.model_name}, "
        + ", ".join(f"v{v.version} from job {v.lineage.training_job_id}" for v in versions)
        + (
            " — one per job"
            if per_job == Counter(t.job_id for t in results)
            else " — [red]not one per job[/red]"
        )
    )
    run.report["jobs"] = [
        {
            "role": t.role,
            "job_id": t.job_id,
            "family": t.family,
            "version": t.version,
            "auc": t.metrics.get("auc"),
            "lightgbm_auc": t.baseline_metrics.get("auc"),
            "seconds": round(t.seconds, 1),
        }
        for t in results
    ]


async def _follow(
    run: DemoRun, progress: Progress, plan: JobPlan, job_id: str, family: str, started: float
) -> TrainedVersion:
    task = progress.add_task(f"{plan.role} ({family})", total=run.options.epochs, detail="")
    async for event in run.c.trainer.watch(job_id):
        progress.update(task, description=f"{plan.role} ({family}) {state_name(event.state)}")
        if event.HasField("epoch_completed"):
            e = event.epoch_completed
            progress.update(
                task,
                completed=e.epoch,
                detail=f"loss {e.train_loss:.4f}  val auc {e.validation_auc:.4f}",
            )
        elif line := describe_event(event):
            progress.console.print(f"[dim]{plan.role}:[/dim] {line}")
    job = await run.c.trainer.get(job_id)
    if job.state != tm.JOB_STATE_SUCCEEDED:
        raise RuntimeError(
            f"training job {job_id} ({plan.spec_file}) ended {state_name(job.state)}: "
            f"{job.failure_reason}; see `lathe logs trainer` and `lathe train show {job_id}`"
        )
    return TrainedVersion(
        role=plan.role,
        job_id=job_id,
        family=family,
        version=job.model_version,
        metrics=dict(job.metrics),
        baseline_metrics=dict(job.baseline_metrics),
        snapshot_id=job.dataset_snapshot_id,
        seconds=time.monotonic() - started,
    )


STEP = Step("The trainer service trains the models", train)
