"""The training recipe: one flat function from a plan to a trained, evaluated, exported model.

Read top to bottom: determinism and threads, data (tensors once), model (+ DDP), optimizer
and schedule, resume, the epoch loop (DistributedSampler shards, checkpoints every K
steps and at each epoch's end, validation AUC per epoch), then on rank 0 the final
evaluation, the LightGBM baseline and the ONNX export with its parity check.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from libs.preprocessing import PreprocessingSpec, sequence_inputs
from services.trainer.domain.plan import WorkerPlan
from services.trainer.store.blobs import BlobStore
from services.trainer.training import checkpoint, data
from services.trainer.training.baseline import lightgbm_baseline
from services.trainer.training.export import OUTPUT, export_onnx
from services.trainer.training.metrics import all_metrics
from services.trainer.training.models import ModelInputs, build
from services.trainer.training.progress import Progress
from services.trainer.training.summaries import baseline_numeric

EVAL_BATCH = 4096


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def distributed(self) -> bool:
        return self.size > 1


def seed_everything(seed: int, rank: int, threads: int) -> np.random.Generator:
    """Deterministic kernels, seeded generators, pinned intra-op threads."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    torch.manual_seed(seed * 1000 + rank)
    return np.random.default_rng([seed, rank])


def run(plan: WorkerPlan, world: World, progress: Progress) -> None:
    blobs = BlobStore(plan.artifact_root)
    numpy_rng = seed_everything(plan.seed, world.rank, plan.threads_per_process)
    tensors, spec = data.load(blobs, plan.dataset_sha256, plan.preprocessing_sha256)
    inputs = ModelInputs.of(spec)
    torch.manual_seed(plan.seed)  # identical initial weights on every rank
    model = build(plan.family, inputs, plan.hyperparameters)
    _start_at_the_base_rate(model, tensors.labels[tensors.train])
    torch.manual_seed(plan.seed * 1000 + world.rank)
    trained: nn.Module = nn.parallel.DistributedDataParallel(model) if world.distributed else model

    sampler = DistributedSampler(
        range(len(tensors.train)),
        num_replicas=world.size,
        rank=world.rank,
        shuffle=True,
        seed=plan.seed,
        drop_last=True,  # equal, disjoint shards: every rank takes the same number of steps
    )
    per_rank_batch = max(1, plan.batch_size // world.size)
    batches_per_epoch = -(-len(sampler) // per_rank_batch)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, plan.epochs * batches_per_epoch)
    )
    loss_fn = nn.BCEWithLogitsLoss()

    epoch, step, skip = 0, 0, 0
    if plan.resume_checkpoint_sha256:
        restored = checkpoint.load(blobs, plan.resume_checkpoint_sha256)
        model.load_state_dict(restored.weights)
        optimizer.load_state_dict(restored.optimizer)
        scheduler.load_state_dict(restored.scheduler)
        if world.rank < len(restored.torch_rng):
            torch.set_rng_state(restored.torch_rng[world.rank])
        numpy_rng = checkpoint.numpy_generator(restored.numpy_rng)
        epoch, step, skip = restored.epoch, restored.step, restored.batches_into_epoch

    def save_checkpoint(done_epochs: int, into_epoch: int) -> None:
        states = [torch.get_rng_state()]
        if world.distributed:
            states = [torch.empty(0)] * world.size
            dist.all_gather_object(states, torch.get_rng_state())
        if world.rank == 0:
            sha = checkpoint.save(
                blobs,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                torch_rng=states,
                numpy_rng=numpy_rng,
                epoch=done_epochs,
                step=step,
                batches_into_epoch=into_epoch,
                job_id=plan.job_id,
                attempt_id=plan.attempt_id,
            )
            progress.report(
                "checkpoint",
                sha256=sha,
                epoch=done_epochs,
                step=step,
                batches_into_epoch=into_epoch,
            )

    first_epoch_of_attempt = True
    while epoch < plan.epochs:
        started = time.time()
        sampler.set_epoch(epoch)
        shard = torch.tensor(list(sampler), dtype=torch.long)
        rank_samples, overlap = _shard_report(shard, world) if first_epoch_of_attempt else ([], 0)
        first_epoch_of_attempt = False
        trained.train()
        order = tensors.train[shard]  # this rank's rows for the epoch, in sampler order
        loss_sum, batches, samples = torch.zeros(()), 0, 0
        for b in range(skip, batches_per_epoch):
            rows = order[b * per_rank_batch : (b + 1) * per_rank_batch]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(trained(*tensors.inputs(rows)), tensors.labels[rows])
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            samples += len(rows) * world.size
            loss_sum += loss.detach()
            batches += 1
            every = plan.checkpoint_every_steps
            if every and step % every == 0 and b + 1 < batches_per_epoch:
                save_checkpoint(epoch, b + 1)
        seconds = time.time() - started
        skip = 0
        epoch += 1
        if world.rank == 0:
            scores = score(model, tensors, tensors.validation)
            labels = tensors.labels[tensors.validation].numpy()
            quick = all_metrics(labels, scores)
            progress.report(
                "epoch",
                epoch=epoch,
                step=step,
                train_loss=float(loss_sum) / batches if batches else float("nan"),
                validation_auc=quick["auc"],
                validation_log_loss=quick["log_loss"],
                samples_per_second=samples / seconds if seconds > 0 else 0.0,
                rank_samples=rank_samples,
                overlapping_samples=overlap,
                seconds=seconds,
                started_at=started,
            )
        save_checkpoint(epoch, 0)

    if world.rank == 0:
        _finish(plan, blobs, model, tensors, spec, progress)
    if world.distributed:
        dist.barrier()


def _start_at_the_base_rate(model: nn.Module, labels: torch.Tensor) -> None:
    """A linear ``head`` starts at the training split's log-odds: with 2% positives, the
    first epochs then learn the ranking instead of the base rate (and short runs come out
    calibrated). Models without such a head are left as built."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and head.out_features == 1 and len(labels):
        rate = float(labels.mean().clamp(1e-4, 1 - 1e-4))
        with torch.no_grad():
            head.bias.fill_(math.log(rate / (1 - rate)))


def score(model: nn.Module, tensors: data.Tensors, rows: torch.Tensor) -> np.ndarray:
    """Probabilities for ``rows`` in eval mode (no dropout), batched."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(rows), EVAL_BATCH):
            index = rows[start : start + EVAL_BATCH]
            out.append(torch.sigmoid(model(*tensors.inputs(index))))
    model.train()
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _shard_report(shard: torch.Tensor, world: World) -> tuple[list[int], int]:
    """Samples per rank and how many appear on more than one rank (0: disjoint)."""
    if not world.distributed:
        return [len(shard)], 0
    shards: list[Any] = [None] * world.size
    dist.all_gather_object(shards, shard.tolist())
    seen = np.concatenate([np.asarray(s, dtype=np.int64) for s in shards])
    return [len(s) for s in shards], int(len(seen) - len(np.unique(seen)))


def _finish(
    plan: WorkerPlan,
    blobs: BlobStore,
    model: nn.Module,
    tensors: data.Tensors,
    spec: PreprocessingSpec,
    progress: Progress,
) -> None:
    """Rank 0: final metrics, the baseline, the export and its artifacts."""
    validation = tensors.validation
    labels = tensors.labels[validation].numpy()
    metrics = all_metrics(labels, score(model, tensors, validation))
    train = tensors.train
    baseline = lightgbm_baseline(
        (
            baseline_numeric(tensors, train),
            tensors.categorical[train].numpy(),
            tensors.labels[train].numpy(),
        ),
        (baseline_numeric(tensors, validation), tensors.categorical[validation].numpy(), labels),
        seed=plan.seed,
        threads=plan.threads_per_process,
    )
    started = time.time()
    exported = export_onnx(
        model,
        tensors.numeric[validation],
        tensors.categorical[validation],
        opset=plan.opset,
        sequences=[
            (s.name, s.values[validation], s.codes[validation], s.mask[validation])
            for s in tensors.sequences
        ],
    )
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    signature: dict[str, Any] = {
        "inputs": [{"name": n, "arrow_type": tensors.feature_types[n]} for n in spec.feature_names],
        "onnx_inputs": list(exported.onnx_inputs),
        "outputs": [{"name": OUTPUT, "dtype": "float32", "shape": [-1]}],
        "family": plan.family,
        "hyperparameters": plan.hyperparameters,
    }
    if spec.sequences:  # absent otherwise: tabular signatures keep their bytes
        signature["sequences"] = [
            {
                "name": s.name,
                "features": list(s.feature_names),
                "max_length": s.max_length,
                "padding": s.padding,
                "order": "oldest first",
                "inputs": list(sequence_inputs(s.name)),
                **(
                    {"event_time": s.event_time, "event_time_reads": "age in seconds"}
                    if s.event_time
                    else {}
                ),
            }
            for s in spec.sequences
        ]
    progress.report(
        "result",
        metrics=metrics,
        baseline_metrics=baseline,
        validation_rows=len(validation),
        onnx_sha256=blobs.put_bytes(exported.onnx_bytes),
        weights_sha256=blobs.put_bytes(save_safetensors(weights)),
        preprocessing_sha256=plan.preprocessing_sha256,
        signature_sha256=blobs.put_bytes(json.dumps(signature, sort_keys=True, indent=1).encode()),
        parity_max_abs_diff=exported.parity_max_abs_diff,
        opset=plan.opset,
        export_seconds=time.time() - started,
    )
