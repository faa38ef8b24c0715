"""Runtimes: engine keys, selection, fallback and parity (the GPU paths, without a GPU)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from libs.errors import InvalidArgument
from services.inference.domain.parity import compare, tolerance
from services.inference.runtimes import keys
from services.inference.runtimes.base import ONNXRUNTIME_CPU, TENSORRT, TORCH_CUDA
from services.inference.runtimes.build import RuntimeSettings, build_runtime
from services.inference.runtimes.keys import BatchProfile, EngineKey, converter_version
from services.inference.runtimes.probe import Capabilities, parse_probe, probe_gpu
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
        "device": "NVIDIA H100 80GB HBM3",
    }
    values.update(kw)
    return EngineKey(**values)  # type: ignore[arg-type]


def test_an_engine_key_names_everything_it_depends_on() -> None:
    key = _key()
    assert key.text == (
        f"tensorrt|{'ab' * 32}|10.9.0|sm90|NVIDIA H100 80GB HBM3|fp16|b1-64-1024"
        f"|conv-{converter_version(TENSORRT)}"
    )
    assert key.matches(key.tags())
    for change in (
        {"onnx_sha256": "cd" * 32},
        {"runtime_version": "10.10.0"},
        {"compute_capability": "8.9"},
        {"device": "NVIDIA H100 PCIe"},  # the same compute capability, another GPU model
        {"precision": "fp32"},
        {"profile": BatchProfile(1, 64, 2048)},
        {"runtime": TORCH_CUDA},
        {"converter": "0" * 16},  # built by other conversion code (before a fix)
    ):
        other = _key(**change)
        assert other.digest != key.digest, change
        assert not other.matches(key.tags()), change  # a mismatched engine is never loaded
        assert not key.matches(other.tags()), change
    for tag, value in (
        ("engine.precision", "fp32"),
        ("engine.device", "NVIDIA A100-SXM4-80GB"),
        ("engine.converter", "0" * 16),
    ):
        assert not key.matches({**key.tags(), tag: value}), tag
    stored_before = {  # an engine stored before the key had these components
        k: v for k, v in key.tags().items() if k not in ("engine.device", "engine.converter")
    }
    assert not key.matches(stored_before)
    with pytest.raises(InvalidArgument):
        BatchProfile(64, 1, 1024)


@pytest.fixture
def fresh_converter_versions() -> Iterator[None]:
    converter_version.cache_clear()
    yield
    converter_version.cache_clear()


def test_the_converter_component_follows_the_conversion_code(
    monkeypatch: pytest.MonkeyPatch, fresh_converter_versions: None
) -> None:
    """Derived from the source of the modules that shape each runtime's engine, so a fix
    to ``fp16``, ``onnx_to_torch`` or a runtime's build settings changes the key."""
    trt, torch_cuda = converter_version(TENSORRT), converter_version(TORCH_CUDA)
    assert len(trt) == 16 and trt != torch_cuda
    assert _key().converter == trt and _key(runtime=TORCH_CUDA).converter == torch_cuda
    real = keys._source
    for runtime, module in (
        (TENSORRT, "fp16"),
        (TENSORRT, "tensorrt"),
        (TORCH_CUDA, "onnx_to_torch"),
        (TORCH_CUDA, "torch_cuda"),
    ):
        changed = f"{keys._PACKAGE}.{module}"
        monkeypatch.setattr(
            keys, "_source", lambda m, c=changed: real(m) + ("# fixed" if m == c else "")
        )
        converter_version.cache_clear()
        assert converter_version(runtime) != (trt if runtime == TENSORRT else torch_cuda), module
    monkeypatch.setattr(keys, "_source", real)
    converter_version.cache_clear()
    assert converter_version(TENSORRT) == trt  # stable while the code is


def test_gpu_runtimes_are_keyed_by_the_gpu_model_and_the_converter() -> None:
    """What ``build_runtime`` asks the engine cache for (no GPU needed to get that far)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["numeric"], ["y"])],
        "g",
        [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    onnx_bytes = helper.make_model(graph).SerializeToString()

    class Asked(Exception):
        pass

    class Engines:
        def get(self, key: EngineKey) -> bytes | None:
            raise Asked(key)

        def put(self, key: EngineKey, engine: bytes) -> None:
            raise AssertionError("nothing is built here")

    options = RuntimeSettings(1, "fp16", PROFILE).with_caps(H100)
    for runtime in (TENSORRT, TORCH_CUDA):
        with pytest.raises(Asked) as asked:
            build_runtime(runtime, onnx_bytes, "ab" * 32, options, Engines(), "test")
        key = asked.value.args[0]
        assert key.device == H100.device and key.compute_capability == "9.0", runtime
        assert key.converter == converter_version(runtime), runtime


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


_FAKE_TORCH = """
__version__ = "2.9.0-fake"
class version:
    cuda = "12.4"
class cuda:
    is_available = staticmethod(lambda: True)
    get_device_capability = staticmethod(lambda i: (12, 0))
    get_device_name = staticmethod(lambda i: "NVIDIA Future GPU")
class _Tensor:
    def add_(self, value): return self
    def cpu(self): return self
def zeros(*shape, device="cpu"):
    if {fail}:
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
    return _Tensor()
"""


@pytest.mark.parametrize("kernels_run", [False, True])
def test_the_probe_reports_cuda_only_once_a_kernel_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernels_run: bool
) -> None:
    """A device torch sees but cannot run kernels on (a GPU newer than its build, a
    broken driver): CUDA counts as absent, so the service never initialises it."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(_FAKE_TORCH.format(fail=not kernels_run))
    path = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    caps = probe_gpu(timeout_s=60, python=sys.executable)
    assert caps.cuda is kernels_run and caps.torch_cuda is kernels_run, caps
    plan = plan_runtimes((TENSORRT, TORCH_CUDA, ONNXRUNTIME_CPU), caps)
    if kernels_run:
        assert TORCH_CUDA in [c.runtime for c in plan.candidates]
        return
    assert "no kernel image is available" in caps.reason
    assert [c.runtime for c in plan.candidates] == [ONNXRUNTIME_CPU]
    assert "torch_cuda: no CUDA device (torch/CUDA: RuntimeError" in plan.skipped[1]


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


class _RecordingTensorRt:
    """What ``build_engine`` asks of the ``tensorrt`` module, recorded (the builder is
    not installable here; ``tests/inference/test_gpu.py`` builds for real on a GPU host).
    Names and signatures follow TensorRT 10's Python API."""

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None: ...

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = 0

    class BuilderFlag:
        FP16 = 0
        TF32 = 7

    def __init__(self, inputs: dict[str, tuple[int, ...]]) -> None:
        self.calls: list[tuple[object, ...]] = []
        recorder, calls = self, self.calls

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...]) -> None:
                self.name, self.shape = name, shape

        class Network:
            num_inputs = len(inputs)

            def get_input(self, i: int) -> Tensor:
                return Tensor(*list(inputs.items())[i])

        class Config:
            def set_memory_pool_limit(self, pool: int, size: int) -> None:
                calls.append(("pool", pool, size))

            def set_flag(self, flag: int) -> None:
                calls.append(("set_flag", flag))

            def clear_flag(self, flag: int) -> None:
                calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile: object) -> None:
                calls.append(("profile", profile))

        class Profile(dict[str, tuple[tuple[int, ...], ...]]):
            def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
                self[name] = shapes

        class Builder:
            def __init__(self, logger: object) -> None: ...

            def create_network(self, flags: int) -> Network:
                calls.append(("network", flags))
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                return b"plan"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network: Network, logger: object) -> None: ...

            def parse(self, graph: bytes) -> bool:
                recorder.parsed = graph
                return True

        self.Builder, self.OnnxParser = Builder, OnnxParser
        self.parsed = b""


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_tensorrt_engine_is_strongly_typed_profiled_and_exact_in_fp32(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 turns TF32 off (on by default, it rounds matmul inputs to 10 bits: ~1e-4 off
    ONNX Runtime, past the 1e-5 bound); fp16 comes from the converted graph, never from a
    builder precision flag; one profile spans the key's rows for every input."""
    from services.inference.runtimes import fp16, tensorrt

    trt = _RecordingTensorRt({"numeric": (-1, 3), "categorical": (-1, 1)})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(fp16, "to_fp16", lambda graph: b"half:" + graph)
    key = _key(precision=precision, profile=BatchProfile(1, 64, 512))

    assert tensorrt.build_engine(b"graph", key) == b"plan"

    assert ("network", 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) in trt.calls
    assert trt.parsed == (b"half:graph" if precision == "fp16" else b"graph")
    assert not [c for c in trt.calls if c[0] == "set_flag"]
    tf32_off = ("clear_flag", trt.BuilderFlag.TF32) in trt.calls
    assert tf32_off == (precision == "fp32")
    (profile,) = [c[1] for c in trt.calls if c[0] == "profile"]
    assert profile == {
        "numeric": ((1, 3), (64, 3), (512, 3)),
        "categorical": ((1, 1), (64, 1), (512, 1)),
    }


def test_torch_batches_are_padded_to_the_export_minimum_or_to_power_of_two_buckets() -> None:
    from services.inference.runtimes.torch_cuda import padded_rows

    exported = [padded_rows(rows, 1024, bucketed=False) for rows in (1, 2, 3, 1000)]
    bucketed = [padded_rows(rows, 1024, bucketed=True) for rows in (1, 2, 3, 5, 64, 65, 1000)]

    assert exported == [2, 2, 3, 1000]  # AOTInductor's batch is dynamic from 2
    assert bucketed == [2, 2, 4, 8, 64, 128, 1024]  # CUDA graphs: one per bucket
    assert padded_rows(700, 700, bucketed=True) == 700  # never past the profile
    assert padded_rows(1, 1, bucketed=True) == 2
