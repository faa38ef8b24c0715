"""GPU runtimes end to end: skipped where there is no GPU (this machine), never faked."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from services.inference.domain.parity import compare, tolerance
from services.inference.runtimes.base import TENSORRT, TORCH_CUDA
from services.inference.runtimes.keys import BatchProfile, EngineKey
from services.inference.runtimes.probe import no_nvidia_device, probe_gpu
from tests.inference.helpers import Credit, export

_ABSENT = no_nvidia_device()
_CAPS = None if _ABSENT else probe_gpu()
_NO_CUDA = _ABSENT or ("" if _CAPS and _CAPS.torch_cuda else f"no CUDA device: {_CAPS.reason}")
_NO_TENSORRT = (
    ""
    if _CAPS and _CAPS.tensorrt_builder
    else "TensorRT's builder is not installed: its wheels are stubs that download the "
    "libraries from the vendor, which this platform's package index cannot reach, and the "
    f"GPU hosts available for testing have no TensorRT ({_NO_CUDA or 'GPU present'})"
)


def _credit() -> Credit:
    rng = np.random.default_rng(0)
    train = {
        "a:x": rng.normal(size=256).tolist(),
        "a:y": rng.normal(size=256).tolist(),
        "a:g": rng.choice(["A", "B"], 256).tolist(),
    }
    return Credit("g", "", ("a:x", "a:y", "a:g"), ("a:g",), train, ())


def _check(runtime_name: str, precision: str) -> None:
    from libs.preprocessing import transform

    credit = _credit()
    onnx_bytes, _, _ = export(credit, family="ft_transformer")
    encoded = transform(credit.spec(), credit.train)
    feeds = {"numeric": encoded.numeric, "categorical": encoded.categorical}
    expected = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, feeds)
    assert _CAPS is not None
    version = (
        _CAPS.tensorrt_version
        if runtime_name == TENSORRT
        else f"torch{_CAPS.torch_version}-cuda{_CAPS.cuda_version}"
    )
    key = EngineKey(
        runtime_name,
        "test",
        version,
        _CAPS.compute_capability,
        precision,
        BatchProfile(1, 64, 1024),
        device=_CAPS.device,
    )
    if runtime_name == TENSORRT:
        from services.inference.runtimes.tensorrt import TensorRtRuntime

        runtime = TensorRtRuntime.create(onnx_bytes, key, None, "test")
    else:
        from services.inference.runtimes.torch_cuda import TorchCudaRuntime

        runtime = TorchCudaRuntime.create(onnx_bytes, key, None, "test")
    result = compare(expected, runtime.run(feeds), tolerance(precision))
    assert result.ok, result.explain(runtime_name)


@pytest.mark.skipif(bool(_NO_CUDA), reason=_NO_CUDA or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_matches_onnx_runtime(precision: str) -> None:
    _check(TORCH_CUDA, precision)


@pytest.mark.skipif(bool(_NO_TENSORRT), reason=_NO_TENSORRT or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_onnx_runtime(precision: str) -> None:
    _check(TENSORRT, precision)
