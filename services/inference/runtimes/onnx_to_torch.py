"""An ONNX graph as a ``torch.nn.Module``, for PyTorch on CUDA without the model's code.

A registry version carries ``model.onnx`` and weights, not the trainer's Python classes
(a service never imports another), so the PyTorch runtime runs the graph itself: each
node becomes the equivalent torch call, initializers become buffers. Shape arithmetic
(``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``, as the exporter writes a dynamic
batch) is kept as Python lists of (symbolic) ints rather than tensors, so
``torch.export`` and AOTInductor see a dynamic batch dimension instead of
data-dependent values. The op set is what the trainer's families export (MLP,
FT-Transformer, sequence transformer at opset 17); an unknown op is refused at load with
its name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

Value = Any  # a torch.Tensor, or a list of ints for shape values
Op = Callable[[list[Value], dict[str, Any], torch.device], Value]
"""A node's computation: its inputs, its attributes, and the device its tensors live on
(the graph inputs'): a tensor an op makes from Python values (indices, shapes, fills) is
made there, since CUDA ops refuse a CPU operand that is not 0-d."""


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _is_shape(v: Value) -> bool:
    return isinstance(v, list)


def _as_list(v: Value) -> list[Any]:
    if _is_shape(v):
        return list(v)
    if not isinstance(v, torch.Tensor):
        return [v]
    return [int(x) for x in v.reshape(-1).tolist()]


def _shape_constant(tensor: torch.Tensor) -> Value:
    """Small int64 constants stay Python values (0-d: an int; 1-d: a list)."""
    if _small_int(tensor) and tensor.dim() == 0:
        return int(tensor)
    if _small_int(tensor) and tensor.dim() == 1:
        return _as_list(tensor)
    return tensor


def _small_int(t: torch.Tensor) -> bool:
    return t.dtype == torch.int64 and t.numel() <= 8


class OnnxModule(nn.Module):
    """Runs ``graph`` node by node with torch ops."""

    def __init__(self, onnx_bytes: bytes) -> None:
        super().__init__()
        model = onnx.load_from_string(onnx_bytes)
        graph = model.graph
        self._nodes = list(graph.node)
        unknown = sorted({n.op_type for n in self._nodes} - set(_OPS) - {"Constant"})
        if unknown:
            raise NotImplementedError(f"ONNX ops without a torch equivalent here: {unknown}")
        self.input_names = [i.name for i in graph.input]
        self.output_names = [o.name for o in graph.output]
        # Initializers and Constant nodes, made once: small int64 ones (shapes, axes) as
        # Python values, the rest as buffers. Made in forward instead, each call would
        # build tensors and read ints out of them, which torch.export cannot trace.
        held = [(init.name, numpy_helper.to_array(init)) for init in graph.initializer]
        held += [
            (node.output[0], _constant_value(node))
            for node in self._nodes
            if node.op_type == "Constant"
        ]
        self._nodes = [node for node in self._nodes if node.op_type != "Constant"]
        self._constants: dict[str, Value | str] = {}
        for i, (value_name, array) in enumerate(held):
            tensor = torch.from_numpy(np.array(array))
            if _small_int(tensor) and tensor.dim() <= 1:
                self._constants[value_name] = _shape_constant(tensor)
            else:
                name = f"c{i}"
                self.register_buffer(name, tensor)
                self._constants[value_name] = name

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, Value] = {}
        for name, value in self._constants.items():
            env[name] = getattr(self, value) if isinstance(value, str) else value
        env.update(zip(self.input_names, inputs, strict=True))
        device = inputs[0].device
        for node in self._nodes:
            args = [env[name] if name else None for name in node.input]
            out = _OPS[node.op_type](args, _attrs(node), device)
            outs = out if isinstance(out, tuple) else (out,)
            env.update(zip(node.output, outs, strict=False))
        return tuple(env[name] for name in self.output_names)


def _tensor(v: Value, device: torch.device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    return torch.tensor(v, dtype=torch.int64, device=device)


def _binary(fn: Callable[[Any, Any], Any]) -> Op:
    def op(args: list[Value], _: dict[str, Any], device: torch.device) -> Value:
        a, b = args
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            la, lb = _as_list(a), _as_list(b)
            if len(la) == 1 and len(lb) > 1:
                la = la * len(lb)
            if len(lb) == 1 and len(la) > 1:
                lb = lb * len(la)
            out = [fn(x, y) for x, y in zip(la, lb, strict=True)]
            return out if _is_shape(a) or _is_shape(b) else out[0]
        return fn(_tensor(a, device), _tensor(b, device))

    return op


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    """A ``Constant`` node's value (a tensor, or one of the number forms)."""
    attrs = _attrs(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for name, dtype in _NUMBER_CONSTANTS:
        if name in attrs:
            return np.array(attrs[name], dtype=dtype)
    raise NotImplementedError(
        f"Constant {node.name!r} holds {sorted(attrs)}; only tensors and numbers are supported"
    )


_NUMBER_CONSTANTS = (
    ("value_float", np.float32),
    ("value_floats", np.float32),
    ("value_int", np.int64),
    ("value_ints", np.int64),
)


def _gather(args: list[Value], attrs: dict[str, Any], device: torch.device) -> Value:
    data, index = args
    axis = attrs.get("axis", 0)
    if _is_shape(data):
        return data[index] if isinstance(index, int) else [data[i] for i in _as_list(index)]
    index_t = _tensor(index, device)
    return torch.index_select(data, axis, index_t.reshape(-1)).reshape(
        *data.shape[:axis], *index_t.shape, *data.shape[axis + 1 :]
    )


def _concat(args: list[Value], attrs: dict[str, Any], device: torch.device) -> Value:
    if all(not isinstance(a, torch.Tensor) or _small_int(a) for a in args) and any(
        not isinstance(a, torch.Tensor) for a in args
    ):
        return [x for a in args for x in _as_list(a)]
    return torch.cat([_tensor(a, device) for a in args], dim=attrs["axis"])


def _reshape(args: list[Value], _: dict[str, Any], device: torch.device) -> Value:
    target = _as_list(args[1])
    if _is_shape(args[0]) and len(target) == 1 and target[0] in (-1, len(args[0])):
        return args[0]  # a shape flattened to itself stays a shape (see _constant_of_shape)
    data = _tensor(args[0], device)
    target = [data.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return data.reshape(target)


def _unsqueeze(args: list[Value], _: dict[str, Any], __: torch.device) -> Value:
    data, axes = args[0], _as_list(args[1])
    if not isinstance(data, torch.Tensor):
        return data if _is_shape(data) else [data]
    for axis in sorted(a % (data.dim() + len(axes)) for a in axes):
        data = data.unsqueeze(axis)
    return data


def _squeeze(args: list[Value], _: dict[str, Any], __: torch.device) -> Value:
    data = args[0]
    if _is_shape(data):
        return data[0] if len(data) == 1 else data
    if len(args) > 1 and args[1] is not None:
        for axis in sorted((a % data.dim() for a in _as_list(args[1])), reverse=True):
            data = data.squeeze(axis)
        return data
    return data.squeeze()


def _slice(args: list[Value], _: dict[str, Any], __: torch.device) -> Value:
    data, starts, ends = args[0], _as_list(args[1]), _as_list(args[2])
    axes = _as_list(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _as_list(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    if _is_shape(data):
        return data[slice(starts[0], min(ends[0], len(data)), steps[0])]
    # aten.slice is what Python slicing lowers to, one axis at a time; called directly
    # it also runs on fake CUDA tensors (the device test runs the graph without a GPU).
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        end = e if e < 2**62 else data.shape[a]
        data = torch.ops.aten.slice.Tensor(data, a, s, end, st)
    return data


def _split(args: list[Value], attrs: dict[str, Any], _: torch.device) -> Value:
    data = args[0]
    axis = attrs.get("axis", 0)
    if len(args) > 1 and args[1] is not None:
        return tuple(torch.split(data, _as_list(args[1]), dim=axis))
    parts = attrs.get("num_outputs") or 2
    return tuple(torch.chunk(data, parts, dim=axis))


def _layer_norm(args: list[Value], attrs: dict[str, Any], _: torch.device) -> Value:
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = attrs.get("axis", -1)
    shape = x.shape[axis:] if axis != -1 else x.shape[-1:]
    return torch.nn.functional.layer_norm(x, shape, weight, bias, attrs.get("epsilon", 1e-5))


def _gemm(args: list[Value], attrs: dict[str, Any], _: torch.device) -> Value:
    a, b = args[0], args[1]
    if attrs.get("transA"):
        a = a.transpose(0, 1)
    if attrs.get("transB"):
        b = b.transpose(0, 1)
    out = attrs.get("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + attrs.get("beta", 1.0) * args[2]
    return out


def _constant_of_shape(args: list[Value], attrs: dict[str, Any], device: torch.device) -> Value:
    value = attrs.get("value")
    fill = np.array(numpy_helper.to_array(value)) if value is not None else np.zeros(1, np.float32)
    shape = _as_list(args[0])
    if fill.dtype == np.int64 and _is_shape(args[0]) and len(shape) == 1 and shape[0] <= 8:
        # A short int64 vector from a shape (e.g. torch's expand: Where(shape == -1,
        # ones, shape)) stays a shape, as the ops around it expect; as a tensor its
        # values would have to be read back, which torch.export cannot trace.
        return [int(fill.reshape(-1)[0])] * int(shape[0])
    dtype = torch.from_numpy(fill).dtype
    return torch.full(shape, float(fill.reshape(-1)[0]), dtype=dtype, device=device)


def _where(args: list[Value], _: dict[str, Any], device: torch.device) -> Value:
    cond, a, b = args
    if all(not isinstance(v, torch.Tensor) for v in (cond, a, b)):
        return [x if c else y for c, x, y in zip(cond, a, b, strict=True)]
    return torch.where(_tensor(cond, device), _tensor(a, device), _tensor(b, device))


def _expand(args: list[Value], _: dict[str, Any], device: torch.device) -> Value:
    data, shape = _tensor(args[0], device), _as_list(args[1])
    shape = [s if s != 1 else -1 for s in shape]
    lead = len(shape) - data.dim()
    return data.reshape(*([1] * lead), *data.shape).expand(*shape)


TORCH_DTYPES = {
    # ONNX TensorProto element type -> torch dtype
    1: torch.float32,
    7: torch.int64,
    6: torch.int32,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
}


def _cast(args: list[Value], attrs: dict[str, Any], _: torch.device) -> Value:
    if not isinstance(args[0], torch.Tensor):
        return args[0]
    return args[0].to(TORCH_DTYPES[attrs["to"]])


def _reduce_sum(args: list[Value], attrs: dict[str, Any], device: torch.device) -> Value:
    """ReduceSum at opset 13+: the axes are an optional input, not an attribute."""
    data = _tensor(args[0], device)
    given = args[1] if len(args) > 1 else None
    axes = _as_list(given) if given is not None else attrs.get("axes", [])
    keep = bool(attrs.get("keepdims", 1))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return data
        return data.sum().reshape([1] * data.dim()) if keep else data.sum()
    return data.sum(dim=list(axes), keepdim=keep)


_OPS: dict[str, Op] = {
    "Add": _binary(lambda a, b: a + b),
    "Sub": _binary(lambda a, b: a - b),
    "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(lambda a, b: a / b if isinstance(a, torch.Tensor) else a // b),
    "Equal": _binary(lambda a, b: a == b),
    "Pow": _binary(lambda a, b: a**b),
    "MatMul": lambda a, _, __: a[0] @ a[1],
    "Gemm": _gemm,
    "Relu": lambda a, _, __: torch.relu(a[0]),
    "Sigmoid": lambda a, _, __: torch.sigmoid(a[0]),
    "Tanh": lambda a, _, __: torch.tanh(a[0]),
    "Erf": lambda a, _, __: torch.erf(a[0]),
    "Sqrt": lambda a, _, __: torch.sqrt(a[0]),
    "Softmax": lambda a, attrs, _: torch.softmax(a[0], dim=attrs.get("axis", -1)),
    "Identity": lambda a, _, __: a[0],
    "Gather": _gather,
    "Concat": _concat,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Split": _split,
    "Transpose": lambda a, attrs, _: a[0].permute(*attrs["perm"]),
    "Shape": lambda a, _, __: [len(a[0])] if _is_shape(a[0]) else list(a[0].shape),
    "LayerNormalization": _layer_norm,
    "ConstantOfShape": _constant_of_shape,
    "Where": _where,
    "Expand": _expand,
    "Cast": _cast,
    "Not": lambda a, _, device: torch.logical_not(_tensor(a[0], device)),
    "ReduceSum": _reduce_sum,
    "ReduceMean": lambda a, attrs, _: a[0].mean(
        dim=attrs.get("axes"), keepdim=bool(attrs.get("keepdims", 1))
    ),
}
