"""Half precision by converting the graph (TensorRT 10+ strongly typed networks).

Float32 initializers and constants become float16, float32 graph inputs are cast to
float16 right after they enter, float32 outputs are cast back before they leave, and
``Cast(to=FLOAT)`` nodes inside become ``Cast(to=FLOAT16)``. Integer tensors (category
indices, shapes) are untouched. The parity check then holds the result to 5e-3.

Finite constants beyond float16's range are clamped to its largest finite value, not
rounded to infinity: PyTorch exports attention masks as ``Where(mask, scores,
finfo(float32).min)``, and as -inf a row whose every position is masked (a sequence with
no events) would turn softmax into NaN where float32 gives a uniform row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_FP16_MAX = float(np.finfo(np.float16).max)


def _in_half_range(values: np.ndarray) -> np.ndarray:
    """Finite values clamped into float16's range (infinities stay), still float32."""
    return np.where(np.isfinite(values), np.clip(values, -_FP16_MAX, _FP16_MAX), values)


def _half(values: np.ndarray) -> np.ndarray:
    return _in_half_range(values).astype(np.float16)


def _convert_float_constants(
    graph: onnx.GraphProto, convert: Callable[[np.ndarray], np.ndarray]
) -> None:
    """Every float32 initializer and tensor attribute (``Constant`` values) through ``convert``."""
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            converted = numpy_helper.from_array(convert(numpy_helper.to_array(init)), init.name)
            graph.initializer[i].CopyFrom(converted)
    for node in graph.node:
        for attribute in node.attribute:
            if (
                attribute.type == onnx.AttributeProto.TENSOR
                and attribute.t.data_type == TensorProto.FLOAT
            ):
                values = convert(numpy_helper.to_array(attribute.t))
                attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))


def within_half_range(onnx_bytes: bytes) -> bytes:
    """The graph with its finite float constants clamped into float16's range, types
    unchanged: for a runtime that casts the graph's tensors to half itself (torch_cuda)."""
    model = onnx.load_from_string(onnx_bytes)
    _convert_float_constants(model.graph, _in_half_range)
    return model.SerializeToString()


def to_fp16(onnx_bytes: bytes) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    _convert_float_constants(graph, _half)
    for node in graph.node:
        for attribute in node.attribute:
            if (
                node.op_type == "Cast"
                and attribute.name == "to"
                and attribute.i == TensorProto.FLOAT
            ):
                attribute.i = TensorProto.FLOAT16
    renamed = {}
    casts_in = []
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type == TensorProto.FLOAT:
            half = f"{graph_input.name}__fp16"
            renamed[graph_input.name] = half
            casts_in.append(
                helper.make_node("Cast", [graph_input.name], [half], to=TensorProto.FLOAT16)
            )
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    casts_out = []
    for graph_output in graph.output:
        if graph_output.type.tensor_type.elem_type == TensorProto.FLOAT:
            half = f"{graph_output.name}__fp16"
            for node in graph.node:
                node.output[:] = [half if o == graph_output.name else o for o in node.output]
            casts_out.append(
                helper.make_node("Cast", [half], [graph_output.name], to=TensorProto.FLOAT)
            )
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return model.SerializeToString()
