"""The interface every runtime implements, and what a built one reports about itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lathe.inference.v1 import message_pb2 as m

ONNXRUNTIME_CPU = "onnxruntime_cpu"
TENSORRT = "tensorrt"
TORCH_CUDA = "torch_cuda"
KINDS = {
    ONNXRUNTIME_CPU: m.RUNTIME_KIND_ONNXRUNTIME_CPU,
    TENSORRT: m.RUNTIME_KIND_TENSORRT,
    TORCH_CUDA: m.RUNTIME_KIND_TORCH_CUDA,
}


class RuntimeUnavailable(Exception):
    """This runtime cannot run here (no GPU, no builder, a failed build); try the next."""


@dataclass(frozen=True)
class RuntimeInfo:
    """What a built runtime is, for ListDeployments and the deployment events."""

    name: str
    """``onnxruntime_cpu``, ``tensorrt`` or ``torch_cuda``."""
    precision: str = "fp32"
    threads: int = 0
    engine_key: str = ""
    """The compiled engine's cache key (GPU runtimes)."""
    selection_reason: str = ""

    @property
    def kind(self) -> int:
        return KINDS[self.name]


class Runtime(Protocol):
    """Executes one ONNX graph's computation on one device. Thread-safe ``run``."""

    info: RuntimeInfo
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs (in ``output_names`` order) for a batch of inputs (host arrays)."""
        ...

    def close(self) -> None: ...


def run_in_slices(
    run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]],
    feeds: Mapping[str, np.ndarray],
    max_rows: int,
) -> list[np.ndarray]:
    """``run`` over ``feeds`` in slices of at most ``max_rows`` rows, outputs joined.

    A compiled engine accepts batches up to its profile's maximum (``max_batch_rows``),
    but a batch can be bigger: one request of more rows than that runs alone, and the
    warm-up and parity batches have fixed sizes. Those are scored slice by slice, never
    refused."""
    rows = next(iter(feeds.values())).shape[0]
    if rows <= max_rows:
        return run(feeds)
    slices = [
        run({name: array[start : start + max_rows] for name, array in feeds.items()})
        for start in range(0, rows, max_rows)
    ]
    return [np.concatenate(outputs) for outputs in zip(*slices, strict=True)]
