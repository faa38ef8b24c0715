"""Work-conserving dynamic batching across concurrent requests."""

from services.inference.batching.batcher import (
    Batcher,
    BatchTarget,
    DeadlinePassed,
    QueueFull,
    ShuttingDown,
)
from services.inference.batching.cost_model import CostModel, wait_seconds

__all__ = [
    "BatchTarget",
    "Batcher",
    "CostModel",
    "DeadlinePassed",
    "QueueFull",
    "ShuttingDown",
    "wait_seconds",
]
