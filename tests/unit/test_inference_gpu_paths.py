"""The GPU runtimes' work on CPU: ONNX -> torch, fp16 conversion, export and AOTInductor."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from libs.preprocessing import SequenceColumns, fit, transform
from services.inference.domain.parity import compare, tolerance
from services.inference.runtimes.fp16 import to_fp16
from services.inference.runtimes.onnx_to_torch import OnnxModule
from services.trainer.domain.families import family as family_named
from services.trainer.training.export import export_onnx
from services.trainer.training.models import ModelInputs, build, build_ft_transformer, build_mlp

# torch.export and AOTInductor warn about torch's own internals (torch 2.13), not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]


def _sequence_exported() -> tuple[bytes, dict[str, np.ndarray]]:
    """A sequence transformer's graph (scalar and event inputs, masks; 1 row in 4 without
    events) and its feeds."""
    rng = np.random.default_rng(1)
    lengths = [0 if i % 4 == 0 else int(rng.integers(1, 12)) for i in range(200)]
    columns = {
        "a:x": rng.normal(size=200).tolist(),
        "p:amount": [rng.lognormal(size=n).tolist() for n in lengths],
        "p:kind": [rng.choice(["A", "B", "C"], n).tolist() for n in lengths],
    }
    sequences = [SequenceColumns("p", ("p:amount", "p:kind"), max_length=8)]
    spec = fit(columns, ["a:x"], sequences=sequences)
    torch.manual_seed(0)
    model = build(
        "sequence_transformer",
        ModelInputs.of(spec),
        family_named("sequence_transformer").resolve({"d_token": 16, "n_heads": 2}),
    )
    encoded = transform(spec, columns)
    (s,) = encoded.sequences
    exported = export_onnx(
        model,
        torch.from_numpy(encoded.numeric),
        torch.from_numpy(encoded.categorical),
        opset=17,
        sequences=[("p", *(torch.from_numpy(a) for a in (s.values, s.codes, s.mask)))],
    )
    feeds = {n: a for n, a in encoded.arrays().items() if n in exported.input_names}
    return exported.onnx_bytes, feeds


def _exported(family: str) -> tuple[bytes, dict[str, np.ndarray]]:
    if family == "sequence_transformer":
        return _sequence_exported()
    rng = np.random.default_rng(0)
    columns = {
        "a:x": rng.normal(size=300).tolist(),
        "a:y": rng.lognormal(size=300).tolist(),
        "a:g": rng.choice(["A", "B", "C"], 300).tolist(),
    }
    spec = fit(columns, ["a:x", "a:y", "a:g"])
    inputs = ModelInputs(len(spec.numeric), tuple(c.cardinality for c in spec.categorical))
    torch.manual_seed(0)
    if family == "mlp":
        model = build_mlp(inputs, d_hidden=16, n_layers=2, dropout=0.0, d_embedding=4)
    else:
        model = build_ft_transformer(
            inputs,
            d_token=16,
            n_blocks=2,
            n_heads=2,
            ffn_factor=1.0,
            attention_dropout=0.0,
            ffn_dropout=0.0,
            residual_dropout=0.0,
        )
    encoded = transform(spec, columns)
    exported = export_onnx(
        model, torch.from_numpy(encoded.numeric), torch.from_numpy(encoded.categorical), opset=17
    )
    return exported.onnx_bytes, {"numeric": encoded.numeric, "categorical": encoded.categorical}


@pytest.mark.parametrize("family", ["mlp", "ft_transformer", "sequence_transformer"])
def test_the_graph_as_a_torch_module_matches_onnx_runtime(family: str) -> None:
    onnx_bytes, feeds = _exported(family)
    reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    module = OnnxModule(onnx_bytes).eval()
    for rows in (1, 5, 300):  # the batch dimension stays dynamic
        part = {k: v[:rows] for k, v in feeds.items()}
        expected = reference.run(None, part)
        with torch.no_grad():
            got = module(*(torch.from_numpy(part[n]) for n in module.input_names))
        result = compare(expected, [t.numpy() for t in got], tolerance("fp32"))
        assert result.ok, result.explain(f"{family} at batch {rows}")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", ["mlp", "ft_transformer", "sequence_transformer"])
def test_the_torch_module_keeps_every_tensor_on_the_inputs_device(
    family: str, precision: str
) -> None:
    """On CUDA, an op refuses a CPU operand that is not 0-d (an index, a shape-derived
    vector, a fill), so every tensor an op makes must be made on the inputs' device.
    Fake CUDA tensors (shapes, dtypes and devices, no memory and no GPU) run the whole
    forward here as a GPU would, device checks included."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from services.inference.runtimes.torch_cuda import half_module

    onnx_bytes, feeds = _exported(family)
    module = half_module(onnx_bytes) if precision == "fp16" else OnnxModule(onnx_bytes).eval()
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        for name, buffer in list(module.named_buffers()):
            setattr(module, name, torch.empty(buffer.shape, dtype=buffer.dtype, device="cuda"))
        inputs = []
        for name in module.input_names:
            host = torch.from_numpy(feeds[name][:5])
            dtype = torch.float16 if precision == "fp16" and host.is_floating_point() else None
            inputs.append(torch.empty(host.shape, dtype=dtype or host.dtype, device="cuda"))
        outputs = module(*inputs)

    assert [(o.device.type, o.shape[0]) for o in outputs] == [("cuda", 5)] * len(outputs)


@pytest.mark.parametrize("family", ["mlp", "ft_transformer", "sequence_transformer"])
def test_the_fp16_graph_stays_within_the_fp16_tolerance(family: str) -> None:
    onnx_bytes, feeds = _exported(family)
    reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(to_fp16(onnx_bytes), providers=["CPUExecutionProvider"])
    assert half.get_inputs()[0].type == "tensor(float)"  # callers still send float32
    result = compare(reference.run(None, feeds), half.run(None, feeds), tolerance("fp16"))
    assert result.ok and result.max_abs_diff > 0, result.explain(family)


def test_an_unknown_op_is_refused_by_name() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    with pytest.raises(NotImplementedError, match="Hardmax"):
        OnnxModule(helper.make_model(graph).SerializeToString())


_LOWEST = -3.4028235e38  # finfo(float32).min, what PyTorch's masked_fill exports
_KEEP = np.array([[True, True, False], [False, False, False]])  # row 2: all masked
_SCORES = np.array([[0.5, -1.0, 2.0], [0.1, 0.2, 0.3]], dtype=np.float32)


def _masked_attention(held_as: str) -> bytes:
    """``Softmax(Where(keep, scores, lowest))``, the lowest value held as an initializer
    or as a 0-d ``Constant`` node (both forms occur in exported graphs)."""
    from onnx import TensorProto, helper

    if held_as == "initializer":
        lowest = helper.make_tensor("min", TensorProto.FLOAT, [1, 3], [_LOWEST] * 3)
        nodes, initializers = [], [lowest]
    else:
        lowest = helper.make_tensor("lowest", TensorProto.FLOAT, [], [_LOWEST])
        nodes, initializers = [helper.make_node("Constant", [], ["min"], value=lowest)], []
    graph = helper.make_graph(
        [
            *nodes,
            helper.make_node("Where", ["keep", "scores", "min"], ["masked"]),
            helper.make_node("Softmax", ["masked"], ["weights"], axis=-1),
        ],
        "attention",
        [
            helper.make_tensor_value_info("keep", TensorProto.BOOL, [None, 3]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 3]),
        ],
        [helper.make_tensor_value_info("weights", TensorProto.FLOAT, [None, 3])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


@pytest.mark.parametrize("held_as", ["initializer", "constant"])
def test_fp16_keeps_a_fully_masked_attention_row_finite(held_as: str) -> None:
    """TensorRT's fp16 graph, run by ONNX Runtime: rounded to -inf in float16, the mask's
    lowest value makes a row with every position masked (a sequence without events) NaN."""
    onnx_bytes = _masked_attention(held_as)
    feeds = {"keep": _KEEP, "scores": _SCORES}
    reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    half = ort.InferenceSession(to_fp16(onnx_bytes), providers=["CPUExecutionProvider"])
    (expected,) = reference.run(None, feeds)
    (got,) = half.run(None, feeds)
    assert np.allclose(expected[1], 1 / 3)  # float32: the masked row is uniform
    assert np.isfinite(got).all(), got
    result = compare([expected], [got], tolerance("fp16"))
    assert result.ok, result.explain("masked attention")


@pytest.mark.parametrize("held_as", ["initializer", "constant"])
def test_the_torch_half_module_keeps_a_fully_masked_attention_row_finite(held_as: str) -> None:
    """The torch-CUDA runtime's fp16 module, on CPU (a buffer cast to half, or a Constant
    promoted to half by ``Where`` beside half scores)."""
    from services.inference.runtimes.torch_cuda import half_module

    module = half_module(_masked_attention(held_as))
    with torch.no_grad():
        (weights,) = module(torch.from_numpy(_KEEP), torch.from_numpy(_SCORES).half())
    assert weights.dtype == torch.float16  # computed in half, as on the GPU
    assert torch.isfinite(weights).all(), weights
    assert torch.allclose(weights[1].float(), torch.full((3,), 1 / 3), atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", ["mlp", "ft_transformer", "sequence_transformer"])
def test_the_torch_cuda_export_runs_on_cpu_with_a_dynamic_batch(
    family: str, precision: str
) -> None:
    """What AOTInductor compiles on the GPU, exported on CPU. It caught: the varargs'
    dynamic shapes given flat (every export failed, so AOTInductor never ran), and shape
    arithmetic read back out of tensors (not traceable), in the transformers' graphs."""
    from services.inference.runtimes.keys import BatchProfile
    from services.inference.runtimes.torch_cuda import export_program

    onnx_bytes, feeds = _exported(family)
    program = export_program(onnx_bytes, precision, BatchProfile(1, 64, 1024), "cpu")
    reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [i.name for i in reference.get_inputs()]
    for rows in (2, 7, 200):  # any batch within the profile, not only the example's
        part = {k: v[:rows] for k, v in feeds.items()}
        inputs = [torch.from_numpy(part[n]) for n in names]
        if precision == "fp16":  # as TorchCudaRuntime.run feeds a half module
            inputs = [t.half() if t.is_floating_point() else t for t in inputs]
        with torch.no_grad():
            got = [t.float().numpy() for t in program.module()(*inputs)]
        result = compare(reference.run(None, part), got, tolerance(precision))
        assert result.ok, result.explain(f"exported {family} ({precision}) at batch {rows}")


def test_torch_cuda_examples_follow_the_graph_inputs() -> None:
    """Sequence inputs are 3-d floats, integer codes and boolean masks, not 2-d floats."""
    from services.inference.runtimes.torch_cuda import example_inputs

    onnx_bytes, feeds = _exported("sequence_transformer")
    examples = example_inputs(onnx_bytes, 5, "fp16", "cpu")
    names = [i.name for i in ort.InferenceSession(onnx_bytes).get_inputs()]
    for name, example in zip(names, examples, strict=True):
        assert tuple(example.shape) == (5, *feeds[name].shape[1:]), name
        expected = torch.from_numpy(feeds[name]).dtype
        assert example.dtype == (torch.float16 if expected == torch.float32 else expected), name


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="AOTInductor on CPU needs a C++ compiler (g++)"
)
def test_the_torch_cuda_runtime_compiles_once_caches_pads_and_matches_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TorchCudaRuntime`` end to end with C++ kernels instead of CUDA ones (everything of
    the GPU path but the device): export, AOTInductor, the ``.pt2`` stored in the engine
    cache and loaded from it by a second replica, a 1-row batch padded to the exported
    minimum of 2, a batch over the profile's maximum scored in slices (one request of
    more rows than ``max_batch_rows`` runs alone), outputs equal to ONNX Runtime's."""
    from services.inference.runtimes.base import TORCH_CUDA
    from services.inference.runtimes.keys import BatchProfile, EngineKey
    from services.inference.runtimes.torch_cuda import TorchCudaRuntime

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    class Engines:  # the engine cache's interface (the registry-backed one: store/engines.py)
        def __init__(self) -> None:
            self.packages: dict[str, bytes] = {}
            self.puts = 0

        def get(self, key: EngineKey) -> bytes | None:
            return self.packages.get(key.text)

        def put(self, key: EngineKey, package: bytes) -> None:
            self.puts += 1
            self.packages[key.text] = package

    onnx_bytes, feeds = _exported("mlp")
    key = EngineKey(TORCH_CUDA, "ab" * 32, "cpu", "none", "fp32", BatchProfile(1, 64, 128))
    engines = Engines()
    first = TorchCudaRuntime.create(onnx_bytes, key, engines, "test", device="cpu")
    second = TorchCudaRuntime.create(onnx_bytes, key, engines, "test", device="cpu")
    assert engines.puts == 1 and "AOTInductor" in second.info.selection_reason
    assert not list(scratch.glob("lathe-aoti-*"))  # no package copy left behind per load
    reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    for runtime in (first, second):
        for rows in (1, 2, 33, 128, 129, 257):  # 129: slices of 128 and 1 (padded to 2)
            part = {k: v[:rows] for k, v in feeds.items()}
            result = compare(reference.run(None, part), runtime.run(part), tolerance("fp32"))
            assert result.ok, result.explain(f"AOTInductor runtime at batch {rows}")
            assert runtime.run(part)[0].shape[0] == rows


def test_constants_in_number_form_are_read() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["two"], value_float=2.0),
            helper.make_node("Mul", ["x", "two"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    module = OnnxModule(helper.make_model(graph).SerializeToString())
    (y,) = module(torch.tensor([[1.0, -3.0]]))
    assert y.tolist() == [[2.0, -6.0]]
