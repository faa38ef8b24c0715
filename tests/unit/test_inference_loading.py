"""Loading a version: whatever fails inside a stage is that stage's ``LoadFailure``.

Before, an ONNX Runtime refusal of the fixed rows, an output without the batch axis first
or a runtime failing its parity run escaped as their own exceptions: the loader then
downloaded the version again every poll and never recorded a refusal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import pytest
from onnx import TensorProto, helper

from libs.preprocessing import fit
from services.inference.app import loading
from services.inference.app.loading import Loaded, LoadFailure, build
from services.inference.app.model import VersionFiles
from services.inference.runtimes.build import BuildOptions
from services.inference.runtimes.keys import BatchProfile
from services.inference.runtimes.probe import Capabilities

OPTIONS = BuildOptions(1, "fp32", BatchProfile(1, 64, 1024), Capabilities())


def _files(onnx_bytes: bytes) -> VersionFiles:
    rng = np.random.default_rng(0)
    columns: dict[str, list[object]] = {
        "a": list(rng.normal(size=50)),
        "b": list(rng.normal(size=50)),
        "c": [str(i % 3) for i in range(50)],
    }
    spec = fit(columns, ["a", "b", "c"], categorical=["c"])
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    return VersionFiles("credit", 2, onnx_bytes, sha, spec, "", "", {})


def _graph(elem: int = TensorProto.FLOAT, *, reduce_axis: int = 1) -> bytes:
    """numeric [batch, 2] -> ReduceSum over ``reduce_axis`` (1: one score per row)."""
    out_shape = ["batch", 1] if reduce_axis == 1 else [1, 2]
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["numeric", "axes"], ["probability"], keepdims=1)],
        "g",
        [helper.make_tensor_value_info("numeric", elem, ["batch", 2])],
        [helper.make_tensor_value_info("probability", elem, out_shape)],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [reduce_axis])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _refusal(onnx_bytes: bytes) -> LoadFailure:
    with pytest.raises(LoadFailure) as refused:
        build(_files(onnx_bytes), ("onnxruntime_cpu",), OPTIONS, None)
    return refused.value


def test_a_well_formed_graph_loads() -> None:
    loaded = build(_files(_graph()), ("onnxruntime_cpu",), OPTIONS, None)
    assert isinstance(loaded, Loaded) and loaded.parity.ok


def test_a_graph_refusing_the_inputs_preprocessing_produces_is_refused_at_load() -> None:
    refused = _refusal(_graph(TensorProto.DOUBLE))  # preprocessing gives float32
    assert refused.stage == "load"
    assert "does not run on the rows preprocessing.json produces" in refused.reason
    assert "tensor(double)" in refused.reason


def test_an_output_without_the_batch_axis_first_is_refused_at_load() -> None:
    refused = _refusal(_graph(reduce_axis=0))  # [1, 2] whatever the batch
    assert refused.stage == "load"
    assert "output 'probability' has shape [1, 2] for 64 rows" in refused.reason


def test_a_runtime_failing_its_parity_run_is_refused_at_parity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_build = loading.build_runtime

    class FailsAfterWarmUp:
        """Runs warm-up (3 batch sizes x 3 runs), then fails: e.g. a device lost."""

        def __init__(self, runtime: loading.OnnxCpuRuntime) -> None:
            self._runtime, self._runs = runtime, 0
            self.info, self.input_names = runtime.info, runtime.input_names
            self.output_names = runtime.output_names

        def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            self._runs += 1
            if self._runs > 3 * len(loading.WARM_BATCHES):
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return self._runtime.run(feeds)

        def close(self) -> None:
            self._runtime.close()

    monkeypatch.setattr(
        loading, "build_runtime", lambda *a, **kw: FailsAfterWarmUp(real_build(*a, **kw))
    )
    refused = _refusal(_graph())
    assert refused.stage == "parity"
    assert "the parity run failed: CUDA error" in refused.reason
