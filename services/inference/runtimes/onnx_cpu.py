"""ONNX Runtime on CPU: the default runtime, and the reference every other one matches.

The serving session runs every graph optimisation with ``threads`` intra-op threads
(one per executor by default: executors already use one core each). The reference
session used for parity runs the graph as exported (optimisations off, one thread), so
the parity check also guards against an optimiser rewrite that changes results.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from services.inference.runtimes.base import ONNXRUNTIME_CPU, RuntimeInfo


class OnnxCpuRuntime:
    def __init__(
        self, onnx_bytes: bytes, *, threads: int, optimized: bool = True, reason: str = ""
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimized
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        # Executors call run() from their own threads; spinning would burn the core
        # another executor needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.info = RuntimeInfo(ONNXRUNTIME_CPU, "fp32", threads, "", reason)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(list(self.output_names), dict(feeds)))

    def close(self) -> None:
        del self._session


def reference_session(onnx_bytes: bytes) -> OnnxCpuRuntime:
    """The graph as exported, unoptimised, on one thread: what parity is measured against."""
    return OnnxCpuRuntime(onnx_bytes, threads=1, optimized=False)
