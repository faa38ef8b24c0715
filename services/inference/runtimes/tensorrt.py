"""TensorRT: an engine built from the ONNX graph, stored in the registry by its key.

Written against TensorRT 10's Python API (``tensorrt`` 10.x; 11 keeps these calls).
Networks are created STRONGLY_TYPED: TensorRT takes every tensor's type from the graph,
so FP16 means an FP16 graph (``fp16.to_fp16`` converts initializers and casts the
inputs), never a builder flag that lets layers pick precision. One optimisation profile
covers the batch range (min/opt/max rows) for every input. The serialized plan is
looked up in the engine cache by ``EngineKey`` first; only when it is absent is it
built (under the cache's lock, so no two replicas build it) and stored. Inference runs
on one CUDA stream with device buffers from torch (present wherever CUDA is).

Not run here: this machine has no GPU and the TensorRT builder cannot be installed
from the package index (its wheels download the libraries from the vendor at install).
``tests/inference/test_gpu.py`` runs it where both exist and is skipped otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from services.inference.runtimes.base import (
    TENSORRT,
    RuntimeInfo,
    RuntimeUnavailable,
    run_in_slices,
)
from services.inference.runtimes.keys import EngineKey

_WORKSPACE_BYTES = 1 << 30


def build_engine(onnx_bytes: bytes, key: EngineKey) -> bytes:
    """A serialized TensorRT plan of ``onnx_bytes`` for ``key``'s precision and profile."""
    import tensorrt as trt

    from services.inference.runtimes.fp16 import to_fp16

    graph = to_fp16(onnx_bytes) if key.precision == "fp16" else onnx_bytes
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeUnavailable(f"TensorRT's ONNX parser refused the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
    if key.precision == "fp32":
        # TF32 is on by default: fp32 matmuls would round their inputs to a 10-bit
        # mantissa, ~1e-4 off ONNX Runtime on the trainer's models, past fp32's 1e-5
        # parity bound, so every fp32 engine would be refused.
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    p = key.profile
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        width = tuple(tensor.shape)[1:]
        profile.set_shape(
            tensor.name, (p.min_rows, *width), (p.opt_rows, *width), (p.max_rows, *width)
        )
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeUnavailable("TensorRT could not build an engine for this graph")
    return bytes(plan)


class TensorRtRuntime:
    """Executes a deserialized plan; one execution context per thread."""

    def __init__(self, plan: bytes, key: EngineKey, reason: str) -> None:
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RuntimeUnavailable("the stored engine does not deserialize on this GPU")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = tuple(n for n in names if self._engine.get_tensor_mode(n) == mode)
        self.output_names = tuple(n for n in names if self._engine.get_tensor_mode(n) != mode)
        self._max_rows = key.profile.max_rows
        self._local = threading.local()
        self.info = RuntimeInfo(TENSORRT, key.precision, 0, key.text, reason)

    @classmethod
    def create(
        cls, onnx_bytes: bytes, key: EngineKey, engines: Any, reason: str
    ) -> TensorRtRuntime:
        plan = engines.get(key) if engines is not None else None
        if plan is None:
            if engines is not None and hasattr(engines, "lock"):
                with engines.lock(key):
                    plan = engines.get(key)  # another replica may have built it meanwhile
                    if plan is None:
                        plan = build_engine(onnx_bytes, key)
                        engines.put(key, plan)
            else:
                plan = build_engine(onnx_bytes, key)
        return cls(plan, key, reason)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return run_in_slices(self._run_within_profile, feeds, self._max_rows)

    def _run_within_profile(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        context, stream = self._context()
        # Copies in, buffers and the engine all on this thread's stream: torch's side
        # streams do not wait for the default one, so inputs copied there could still be
        # in flight when the engine reads them, and buffers would be freed under it.
        with torch.cuda.stream(stream):
            keep = []
            for name in self.input_names:
                host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                tensor = host.cuda(non_blocking=True)
                keep.append(tensor)
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
            outputs = []
            for name in self.output_names:
                shape = tuple(context.get_tensor_shape(name))
                dtype = _torch_dtype(torch, self._engine.get_tensor_dtype(name), self._trt)
                out = torch.empty(shape, dtype=dtype, device="cuda")
                context.set_tensor_address(name, out.data_ptr())
                outputs.append(out)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
            return [o.float().cpu().numpy() for o in outputs]

    def _context(self):  # type: ignore[no-untyped-def]
        if not hasattr(self._local, "context"):
            self._local.context = self._engine.create_execution_context()
            self._local.stream = self._torch.cuda.Stream()
        return self._local.context, self._local.stream

    def close(self) -> None:
        self._engine = None


def _torch_dtype(torch: Any, dtype: Any, trt: Any) -> Any:
    return {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int64: torch.int64,
        trt.int32: torch.int32,
    }[dtype]
