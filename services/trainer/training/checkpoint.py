"""Checkpoints: weights in safetensors, training state loadable with ``weights_only``.

A checkpoint is three blobs in the content-addressed store, each written atomically:
``weights`` (safetensors), ``state`` (optimizer, scheduler, every rank's torch RNG state
and the sampler position, saved with ``torch.save`` and only ever read back with
``weights_only=True``), and a JSON manifest naming both plus numpy's generator state as
JSON (its legacy pickled state would not load with ``weights_only``). The manifest's
sha256 is the checkpoint's id, recorded in a ``CheckpointRecorded`` event.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from services.trainer.store.blobs import BlobStore

FORMAT = "lathe.trainer.checkpoint"


@dataclass(frozen=True)
class Restored:
    """What a checkpoint gives back to the loop."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    torch_rng: list[torch.Tensor]
    """One CPU generator state per rank, in rank order."""
    numpy_rng: dict[str, Any]
    epoch: int
    step: int
    batches_into_epoch: int


def save(
    blobs: BlobStore,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    torch_rng: list[torch.Tensor],
    numpy_rng: np.random.Generator,
    epoch: int,
    step: int,
    batches_into_epoch: int,
    job_id: str,
    attempt_id: str,
) -> str:
    """Write the checkpoint; returns the manifest's sha256."""
    weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    weights_sha = blobs.put_bytes(save_safetensors(weights))
    buffer = io.BytesIO()
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch_rng,
        },
        buffer,
    )
    state_sha = blobs.put_bytes(buffer.getvalue())
    manifest = {
        "format": FORMAT,
        "version": 1,
        "weights": weights_sha,
        "state": state_sha,
        "numpy_rng": numpy_rng.bit_generator.state,
        "epoch": epoch,
        "step": step,
        "batches_into_epoch": batches_into_epoch,
        "job_id": job_id,
        "attempt_id": attempt_id,
    }
    return blobs.put_bytes(json.dumps(manifest, sort_keys=True).encode())


def load(blobs: BlobStore, sha256: str) -> Restored:
    manifest = json.loads(blobs.get_bytes(sha256))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"blob {sha256} is not a trainer checkpoint")
    weights = load_safetensors(blobs.get_bytes(manifest["weights"]))
    state = torch.load(io.BytesIO(blobs.get_bytes(manifest["state"])), weights_only=True)
    return Restored(
        weights=weights,
        optimizer=state["optimizer"],
        scheduler=state["scheduler"],
        torch_rng=list(state["torch_rng"]),
        numpy_rng=manifest["numpy_rng"],
        epoch=int(manifest["epoch"]),
        step=int(manifest["step"]),
        batches_into_epoch=int(manifest["batches_into_epoch"]),
    )


def numpy_generator(state: dict[str, Any]) -> np.random.Generator:
    generator = np.random.default_rng()
    generator.bit_generator.state = state
    return generator
