"""Building a selected runtime for one ONNX graph (GPU runtimes imported only when chosen)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.inference.runtimes.base import (
    ONNXRUNTIME_CPU,
    TENSORRT,
    TORCH_CUDA,
    Runtime,
    RuntimeUnavailable,
)
from services.inference.runtimes.keys import BatchProfile, EngineKey
from services.inference.runtimes.onnx_cpu import OnnxCpuRuntime
from services.inference.runtimes.probe import Capabilities


class EngineCache(Protocol):
    """Where compiled engines are kept by key (the registry), callable from a build thread."""

    def get(self, key: EngineKey) -> bytes | None: ...

    def put(self, key: EngineKey, engine: bytes) -> None: ...


@dataclass(frozen=True)
class RuntimeSettings:
    """How runtimes are built, as configured; the machine's capabilities come from a probe."""

    threads: int
    """Intra-op threads of a CPU runtime."""
    precision: str
    """GPU runtimes: fp32, or fp16 (the graph converted to half precision)."""
    profile: BatchProfile

    def with_caps(self, caps: Capabilities) -> BuildOptions:
        return BuildOptions(self.threads, self.precision, self.profile, caps)


@dataclass(frozen=True)
class BuildOptions:
    threads: int
    """Intra-op threads of a CPU runtime."""
    precision: str
    """GPU runtimes: fp32, or fp16 (the graph converted to half precision)."""
    profile: BatchProfile
    caps: Capabilities


def build_runtime(
    name: str,
    onnx_bytes: bytes,
    onnx_sha256: str,
    options: BuildOptions,
    engines: EngineCache | None,
    reason: str,
) -> Runtime:
    """The runtime ``name`` for this graph; ``RuntimeUnavailable`` when it cannot be had."""
    if name == ONNXRUNTIME_CPU:
        return OnnxCpuRuntime(onnx_bytes, threads=options.threads, reason=reason)
    if name == TENSORRT:
        from services.inference.runtimes import tensorrt

        key = EngineKey(
            TENSORRT,
            onnx_sha256,
            options.caps.tensorrt_version,
            options.caps.compute_capability,
            options.precision,
            options.profile,
            device=options.caps.device,  # plans are only valid on the GPU model built on
        )
        return tensorrt.TensorRtRuntime.create(onnx_bytes, key, engines, reason)
    if name == TORCH_CUDA:
        from services.inference.runtimes import torch_cuda

        version = f"torch{options.caps.torch_version}-cuda{options.caps.cuda_version}"
        key = EngineKey(
            TORCH_CUDA,
            onnx_sha256,
            version,
            options.caps.compute_capability,
            options.precision,
            options.profile,
            device=options.caps.device,  # Inductor tunes its kernels on the GPU model
        )
        return torch_cuda.TorchCudaRuntime.create(onnx_bytes, key, engines, reason)
    raise RuntimeUnavailable(f"unknown runtime {name!r}")
