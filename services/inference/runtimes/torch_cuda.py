"""PyTorch on CUDA: the ONNX graph as a torch module, compiled ahead of time by AOTInductor.

``onnx_to_torch.OnnxModule`` runs the graph with torch ops; ``torch.export`` captures it
with a dynamic batch dimension over the key's profile, and AOTInductor compiles it into a
``.pt2`` package (CUDA kernels for this GPU architecture) that is stored in the engine
cache under its ``EngineKey`` like a TensorRT plan, so replicas load it instead of
compiling. fp16 clamps the graph's float constants into half range, then casts the module's
floating buffers and the float inputs to half.
When AOTInductor cannot compile the graph, ``torch.compile`` with CUDA graphs
(``mode="reduce-overhead"``) serves it, compiled in this process and not cached.

Not run here (no GPU on this machine); ``infra/gpu/torch_cuda_check.py`` and
``tests/inference/test_gpu.py`` run it where a CUDA device is.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.inference.runtimes.base import (
    TORCH_CUDA,
    RuntimeInfo,
    RuntimeUnavailable,
    run_in_slices,
)
from services.inference.runtimes.keys import BatchProfile, EngineKey

_log = logging.getLogger(__name__)


def _module(onnx_bytes: bytes, precision: str, device: str = "cuda") -> Any:
    from services.inference.runtimes.onnx_to_torch import OnnxModule

    if precision == "fp16":
        return half_module(onnx_bytes).to(device)
    return OnnxModule(onnx_bytes).eval().to(device)


def half_module(onnx_bytes: bytes) -> Any:
    """The graph as a torch module for half-precision inputs: its float constants clamped
    into float16's range first (``fp16.within_half_range``), then its floating buffers
    cast to half. Rounded to -inf instead, an exported attention mask's
    ``finfo(float32).min`` makes a fully masked row (a sequence without events) NaN."""
    from services.inference.runtimes.fp16 import within_half_range
    from services.inference.runtimes.onnx_to_torch import OnnxModule

    module = OnnxModule(within_half_range(onnx_bytes)).eval()
    for name, buffer in list(module.named_buffers()):
        if buffer.is_floating_point():
            setattr(module, name, buffer.half())
    return module


def compile_package(onnx_bytes: bytes, key: EngineKey, device: str = "cuda") -> bytes:
    """An AOTInductor ``.pt2`` package of the graph for ``key`` (``device="cpu"``: the
    same pipeline with C++ kernels, for tests on machines without a GPU)."""
    import torch

    program = export_program(onnx_bytes, key.precision, key.profile, device)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt2"
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
        return path.read_bytes()


def export_program(onnx_bytes: bytes, precision: str, profile: BatchProfile, device: str) -> Any:
    """``torch.export`` of the graph's module with a dynamic batch dimension over
    ``profile`` (what AOTInductor compiles; on CPU too, for tests)."""
    import torch

    module = _module(onnx_bytes, precision, device)
    # The exported batch starts at 2 (torch.export specialises a dimension of 1), so a
    # profile of at most one row still exports, and run() pads a single row to two.
    low, high = max(2, profile.min_rows), max(2, profile.max_rows)
    examples = example_inputs(onnx_bytes, min(max(low, profile.opt_rows), high), precision, device)
    batch = torch.export.Dim("batch", min=low, max=high)
    # forward(*inputs): the varargs are one argument, so their shapes are one tuple.
    shapes = (tuple({0: batch} for _ in examples),)
    with torch.no_grad():  # not process-wide: a service (or a test run) may train too
        return torch.export.export(module, tuple(examples), dynamic_shapes=shapes)


def example_inputs(onnx_bytes: bytes, rows: int, precision: str, device: str) -> list[Any]:
    """Zeros of each graph input's type and shape, ``rows`` long: float inputs in the
    runtime's precision, integer and boolean ones (category codes, sequence masks) as
    declared, every dimension but the batch as the graph fixes it."""
    import onnx
    import torch

    from services.inference.runtimes.onnx_to_torch import TORCH_DTYPES

    types = dict(TORCH_DTYPES)
    if precision == "fp16":
        types[onnx.TensorProto.FLOAT] = torch.float16
    examples = []
    for graph_input in onnx.load_from_string(onnx_bytes).graph.input:
        tensor_type = graph_input.type.tensor_type
        dims = [d.dim_value for d in tensor_type.shape.dim[1:]]
        if tensor_type.elem_type not in types or not all(dims):
            raise RuntimeUnavailable(
                f"graph input {graph_input.name!r} has a type or shape torch_cuda cannot "
                "compile ahead of time (it needs fixed dimensions after the batch)"
            )
        dtype = types[tensor_type.elem_type]
        examples.append(torch.zeros((rows, *dims), dtype=dtype, device=device))
    return examples


def padded_rows(rows: int, max_rows: int, *, bucketed: bool) -> int:
    """Rows a batch of ``rows`` is run as: at least 2 (the exported batch dimension starts
    there), and when ``bucketed`` the next power of two, within the profile."""
    if not bucketed:
        return max(2, rows)
    return max(rows, min(1 << max(1, rows - 1).bit_length(), max(2, max_rows)))


class TorchCudaRuntime:
    def __init__(
        self,
        call: Any,
        input_names: tuple[str, ...],
        info: RuntimeInfo,
        key: EngineKey,
        device: str = "cuda",
        *,
        bucketed: bool = False,
    ):
        """``bucketed``: pad batches to powers of two (CUDA graphs record one graph per
        batch size they see; buckets keep that to ~log2(max rows) graphs)."""
        import torch

        self._torch = torch
        self._call = call
        self._device = device
        self._lock = threading.Lock()
        self._half = key.precision == "fp16"
        self._max_rows = key.profile.max_rows
        self._bucketed = bucketed
        self.input_names = input_names
        self.output_names = ("output",)
        self.info = info

    @classmethod
    def create(
        cls, onnx_bytes: bytes, key: EngineKey, engines: Any, reason: str, device: str = "cuda"
    ) -> TorchCudaRuntime:
        """Load ``key``'s package from ``engines`` or compile (and store) it; ``device``
        "cpu" runs the same code with C++ kernels (tests on machines without a GPU)."""
        import onnx
        import torch

        names = tuple(i.name for i in onnx.load_from_string(onnx_bytes).graph.input)
        package = engines.get(key) if engines is not None else None
        try:
            if package is None:
                package = compile_package(onnx_bytes, key, device)
                if engines is not None:
                    engines.put(key, package)
            # The loaded package needs its file no longer (checked on CPU): one copy per
            # load would otherwise pile up in /tmp for every version ever deployed.
            with tempfile.TemporaryDirectory(prefix="lathe-aoti-") as folder:
                path = Path(folder) / "model.pt2"
                path.write_bytes(package)
                call = torch._inductor.aoti_load_package(str(path))
            info = RuntimeInfo(TORCH_CUDA, key.precision, 0, key.text, reason + " (AOTInductor)")
        except Exception as exc:  # AOTInductor could not: torch.compile with CUDA graphs
            _log.warning("AOTInductor failed (%s); using torch.compile with CUDA graphs", exc)
            try:
                module = _module(onnx_bytes, key.precision, device)
                call = torch.compile(module, mode="reduce-overhead")
                with torch.no_grad():  # compiling is lazy: its errors surface here, not later
                    call(*example_inputs(onnx_bytes, 2, key.precision, device))
            except Exception as inner:
                raise RuntimeUnavailable(f"torch could not compile the graph: {inner}") from inner
            info = RuntimeInfo(TORCH_CUDA, key.precision, 0, "", reason + " (torch.compile)")
            return cls(call, names, info, key, device, bucketed=True)
        return cls(call, names, info, key, device)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return run_in_slices(self._run_within_profile, feeds, self._max_rows)

    def _run_within_profile(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        inputs = []
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name]))
            tensor = tensor.to(self._device, non_blocking=True)
            if self._half and tensor.is_floating_point():
                tensor = tensor.half()
            inputs.append(tensor)
        rows = inputs[0].shape[0]
        pad = padded_rows(rows, self._max_rows, bucketed=self._bucketed) - rows
        if pad:
            inputs = [torch.cat([t, t[:1].expand(pad, *t.shape[1:])]) for t in inputs]
        with self._lock, torch.no_grad():
            outputs = self._call(*inputs)
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        return [o[:rows].float().cpu().numpy() for o in outputs]

    def close(self) -> None:
        self._call = None
