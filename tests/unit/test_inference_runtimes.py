"""Runtimes: engine keys, selection, fallback and parity (the GPU paths, without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from libs.errors import InvalidArgument
from services.inference.domain.parity import compare, tolerance
from services.inference.runtimes.base import ONNXRUNTIME_CPU, TENSORRT, TORCH_CUDA
from services.inference.runtimes.keys import BatchProfile, EngineKey
from services.inference.runtimes.probe import Capabilities, parse_probe
from services.inference.runtimes.selection import parse_preference, plan_runtimes

PROFILE = BatchProfile(1, 64, 1024)
H100 = Capabilities(
    cuda=True,
    torch_cuda=True,
    tensorrt_version="10.9.0",
    tensorrt_builder=True,
    compute_capability="9.0",
    device="NVIDIA H100",
    torch_version="2.13.0",
    cuda_version="12.8",
)


def _key(**kw: object) -> EngineKey:
    values: dict[str, object] = {
        "runtime": TENSORRT,
        "onnx_sha256": "ab" * 32,
        "runtime_version": "10.9.0",
        "compute_capability": "9.0",
        "precision": "fp16",
        "profile": PROFILE,
    }
    values.update(kw)
    return EngineKey(**values)  # type: ignore[arg-type]


def test_an_engine_key_names_everything_it_depends_on() -> None:
    key = _key()
    assert key.text == f"tensorrt|{'ab' * 32}|10.9.0|sm90|fp16|b1-64-1024"
    assert key.matches(key.tags())
    for change in (
        {"onnx_sha256": "cd" * 32},
        {"runtime_version": "10.10.0"},
        {"compute_capability": "8.9"},
        {"precision": "fp32"},
        {"profile": BatchProfile(1, 64, 2048)},
        {"runtime": TORCH_CUDA},
    ):
        other = _key(**change)
        assert other.digest != key.digest, change
        assert not other.matches(key.tags()), change  # a mismatched engine is never loaded
    assert not key.matches({**key.tags(), "engine.precision": "fp32"})
    with pytest.raises(InvalidArgument):
        BatchProfile(64, 1, 1024)


def test_without_a_gpu_only_onnx_runtime_is_planned_and_the_reasons_say_why() -> None:
    plan = plan_runtimes((TENSORRT, TORCH_CUDA, ONNXRUNTIME_CPU), Capabilities(reason="no device"))
    assert [c.runtime for c in plan.candidates] == [ONNXRUNTIME_CPU]
    assert plan.skipped[0].startswith("tensorrt: no CUDA device")
    assert plan.skipped[1].startswith("torch_cuda: no CUDA device")
    assert "fallback" in plan.candidates[0].reason


def test_with_a_gpu_the_preference_order_is_kept() -> None:
    plan = plan_runtimes((TENSORRT, TORCH_CUDA, ONNXRUNTIME_CPU), H100)
    assert [c.runtime for c in plan.candidates] == [TENSORRT, TORCH_CUDA, ONNXRUNTIME_CPU]
    torch_first = plan_runtimes((TORCH_CUDA, TENSORRT), H100)
    assert [c.runtime for c in torch_first.candidates] == [TORCH_CUDA, TENSORRT, ONNXRUNTIME_CPU]
    cpu_only = plan_runtimes((ONNXRUNTIME_CPU, TENSORRT), H100)
    assert [c.runtime for c in cpu_only.candidates] == [ONNXRUNTIME_CPU]


def test_a_gpu_without_the_tensorrt_builder_falls_back_to_torch() -> None:
    no_trt = Capabilities(**{**H100.__dict__, "tensorrt_version": "", "tensorrt_builder": False})
    plan = plan_runtimes((TENSORRT, TORCH_CUDA, ONNXRUNTIME_CPU), no_trt)
    assert [c.runtime for c in plan.candidates] == [TORCH_CUDA, ONNXRUNTIME_CPU]
    assert plan.skipped == ("tensorrt: the tensorrt package is not installed",)
    with pytest.raises(InvalidArgument):
        parse_preference("tensorrt,cuda")


def test_the_probe_result_is_parsed_and_a_crash_is_no_gpu() -> None:
    caps = parse_probe(
        'noise\n{"cuda": true, "torch_cuda": true, "tensorrt_version": "10.9.0", '
        '"builder": true, "compute_capability": "9.0", "device": "H100", "reasons": []}'
    )
    assert caps.cuda and caps.tensorrt_builder and caps.compute_capability == "9.0"
    assert not parse_probe("Segmentation fault").cuda


def test_parity_tolerances_by_precision() -> None:
    reference = [np.array([0.1, 0.5, 0.9], dtype=np.float32)]
    assert tolerance("fp32") == 1e-5 and tolerance("fp16") == 5e-3
    assert compare(reference, [reference[0] + 5e-6], tolerance("fp32")).ok
    off = compare(reference, [reference[0] + np.array([0, 2e-5, 0])], tolerance("fp32"))
    assert not off.ok and off.worst_row == 1
    assert compare(reference, [reference[0] + 4e-3], tolerance("fp16")).ok
    assert not compare(reference, [reference[0] + 6e-3], tolerance("fp16")).ok
    assert not compare(reference, [np.array([0.1, np.nan, 0.9])], 1.0).ok
    assert not compare(reference, [reference[0][:2]], 1.0).ok
    with pytest.raises(ValueError, match="precision"):
        tolerance("int8")
