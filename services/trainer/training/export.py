"""Export: ONNX (one self-contained file, dynamic batch axis) checked against torch.

torch 2.13's default exporter (``dynamo=True``) needs onnxscript, which this platform does
not ship, and writes large weights to a sidecar ``.onnx.data`` unless given
``external_data=False``; the TorchScript exporter used here writes one file (external
data only past 2 GB, which is refused below). Opset 17 keeps attention as plain
MatMul/Softmax (ONNX Runtime's CPU ``Attention`` op at opset 23 rejects padding masks).
ONNX Runtime then scores the validation rows; more than ``PARITY_TOLERANCE`` away from
torch anywhere fails the job with the numbers. Sequence inputs (``<name>.values`` /
``.codes`` / ``.mask``) keep a dynamic batch axis and their fixed N slots.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

from libs.preprocessing import CATEGORICAL_INPUT, NUMERIC_INPUT, sequence_inputs

PARITY_TOLERANCE = 1e-5
OUTPUT = "probability"


class ParityError(Exception):
    """ONNX Runtime's scores differ from torch's by more than the tolerance."""


class Scorer(nn.Module):
    """The exported graph: the model's inputs (those with a width) in, probabilities out.

    ``arguments`` names every argument of the model's forward in order; those not in
    ``present`` (a zero-width block: no numeric features, a sequence without categorical
    fields, ...) are not graph inputs and are rebuilt inside the graph as empty tensors.
    """

    def __init__(
        self, model: nn.Module, arguments: tuple[tuple[str, torch.dtype], ...], present: set[str]
    ) -> None:
        super().__init__()
        self.model, self.arguments = model, arguments
        self.present = tuple(name for name, _ in arguments if name in present)

    def forward(self, *inputs: Tensor) -> Tensor:
        given = dict(zip(self.present, inputs, strict=True))
        # A 2-D input ([batch, width]: numeric, categorical or a mask, one of which any
        # model has) gives an absent scalar block its [batch, 0] shape by slicing alone.
        reference = next(t for t in inputs if t.dim() == 2)
        args = []
        for name, dtype in self.arguments:
            if name in given:
                args.append(given[name])
            elif name.endswith((".values", ".codes")):
                mask = given[name.rsplit(".", 1)[0] + ".mask"]
                args.append(mask.unsqueeze(-1)[:, :, :0].to(dtype))
            else:
                args.append(reference[:, :0].to(dtype))
        return torch.sigmoid(self.model(*args))


@dataclass(frozen=True)
class Exported:
    onnx_bytes: bytes
    input_names: tuple[str, ...]
    parity_max_abs_diff: float
    onnx_inputs: tuple[dict[str, Any], ...] = ()
    """Each graph input: name, dtype and shape (-1: the dynamic batch axis)."""


def export_onnx(
    model: nn.Module,
    numeric: Tensor,
    categorical: Tensor,
    *,
    opset: int,
    sequences: Sequence[tuple[str, Tensor, Tensor, Tensor]] = (),
) -> Exported:
    """Export ``model`` (eval mode) and check it on these rows (the validation split).

    ``sequences``: per sequence input (name, values, codes, mask) as libs/preprocessing
    encodes them; the graph's inputs are named as ``EncodedBatch.arrays`` names them.
    """
    model.eval()
    named: dict[str, Tensor] = {NUMERIC_INPUT: numeric, CATEGORICAL_INPUT: categorical}
    for name, values, codes, mask in sequences:
        named.update(zip(sequence_inputs(name), (values, codes, mask), strict=True))
    present = {n for n, t in named.items() if n.endswith(".mask") or t.shape[-1]}
    arguments = tuple((n, t.dtype) for n, t in named.items())
    scorer = Scorer(model, arguments, present).eval()
    names = scorer.present
    example = tuple(named[n] for n in names)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            scorer,
            tuple(t[:2] for t in example),
            buffer,
            dynamo=False,
            input_names=list(names),
            output_names=[OUTPUT],
            dynamic_axes={**{name: {0: "batch"} for name in names}, OUTPUT: {0: "batch"}},
            opset_version=opset,
        )
    data = buffer.getvalue()
    graph = onnx.load_from_string(data)
    if any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer
    ):  # pragma: no cover - only past 2 GB
        raise ParityError("the export wrote external data; the model must fit one ONNX file")
    onnx.checker.check_model(graph)
    with torch.no_grad():
        expected = scorer(*example).numpy().astype(np.float64)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT], {n: t.numpy() for n, t in zip(names, example, strict=True)})
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected))) if len(expected) else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(
            f"ONNX Runtime and torch disagree on the validation rows: max |p_onnx - p_torch| = "
            f"{diff:.3g} > {PARITY_TOLERANCE:g} over {len(expected)} rows (opset {opset})"
        )
    onnx_inputs = tuple(
        {
            "name": n,
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": [-1, *t.shape[1:]],
        }
        for n, t in zip(names, example, strict=True)
    )
    return Exported(data, names, diff, onnx_inputs)
