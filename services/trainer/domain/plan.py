"""What one attempt's workers are told: the contract between the service and ``worker.py``.

The service writes it as JSON next to the attempt's progress file; every rank reads it.
It names inputs by content digest in the trainer's artifact root, so the same plan runs
unchanged on this machine (local launcher) or in pods that mount the same storage
(Kubernetes launcher).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OPSET = 17
"""ONNX opset of the export: attention stays at <= 22 (see ADR 0017)."""


@dataclass(frozen=True)
class WorkerPlan:
    """One attempt of one job."""

    job_id: str
    attempt_id: str
    """Fences everything the attempt writes: only the current attempt's progress is recorded."""
    artifact_root: str
    """The trainer's content-addressed blob store (datasets, checkpoints, artifacts)."""
    attempt_dir: str
    """Where rank 0 appends ``progress.jsonl`` for the service to follow."""
    dataset_sha256: str
    """Arrow IPC: feature columns, ``__label`` (float) and ``__split`` (0 train, 1 validation)."""
    preprocessing_sha256: str
    family: str
    hyperparameters: dict[str, Any]
    epochs: int
    batch_size: int
    """Global: each of the world's ranks takes batch_size / world_size."""
    learning_rate: float
    weight_decay: float
    checkpoint_every_steps: int
    seed: int
    threads_per_process: int
    device: str
    resume_checkpoint_sha256: str = ""
    opset: int = OPSET
    model_plugins: tuple[str, ...] = field(default_factory=tuple)

    @property
    def progress_path(self) -> Path:
        return Path(self.attempt_dir) / "progress.jsonl"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> WorkerPlan:
        data = json.loads(text)
        data["model_plugins"] = tuple(data.get("model_plugins", ()))
        return cls(**data)
