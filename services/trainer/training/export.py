"""Export: ONNX (one self-contained file, dynamic batch axis) checked against torch.

torch 2.13's default exporter (``dynamo=True``) needs onnxscript, which this platform does
not ship, and writes large weights to a sidecar ``.onnx.data`` unless given
``external_data=False``; the TorchScript exporter used here writes one file (external
data only past 2 GB, which is refused below). Opset 17 keeps attention as plain
MatMul/Softmax (ONNX Runtime's CPU ``Attention`` op at opset 23 rejects padding masks).
ONNX Runtime then scores the validation rows; more than ``PARITY_TOLERANCE`` away from
torch anywhere fails the job with the numbers.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

PARITY_TOLERANCE = 1e-5
OUTPUT = "probability"


class ParityError(Exception):
    """ONNX Runtime's scores differ from torch's by more than the tolerance."""


class Scorer(nn.Module):
    """The exported graph: the model's inputs (those it has) in, probabilities out."""

    def __init__(self, model: nn.Module, n_numeric: int, n_categorical: int) -> None:
        super().__init__()
        self.model, self.n_numeric, self.n_categorical = model, n_numeric, n_categorical

    def forward(self, *inputs: Tensor) -> Tensor:
        if self.n_numeric and self.n_categorical:
            numeric, categorical = inputs
        elif self.n_numeric:
            (numeric,) = inputs
            categorical = numeric[:, :0].long()
        else:
            (categorical,) = inputs
            numeric = categorical[:, :0].float()
        return torch.sigmoid(self.model(numeric, categorical))


@dataclass(frozen=True)
class Exported:
    onnx_bytes: bytes
    input_names: tuple[str, ...]
    parity_max_abs_diff: float


def export_onnx(model: nn.Module, numeric: Tensor, categorical: Tensor, *, opset: int) -> Exported:
    """Export ``model`` (eval mode) and check it on these rows (the validation split)."""
    model.eval()
    scorer = Scorer(model, numeric.shape[1], categorical.shape[1]).eval()
    names = tuple(
        name
        for name, width in (("numeric", numeric.shape[1]), ("categorical", categorical.shape[1]))
        if width
    )
    example = tuple(
        t for t, name in ((numeric, "numeric"), (categorical, "categorical")) if name in names
    )
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
    return Exported(data, names, diff)
