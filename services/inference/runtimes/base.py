"""The interface every runtime implements, and what a built one reports about itself."""

from __future__ import annotations

from collections.abc import Mapping
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
