"""The learned policy's scorer as ONNX: one self-contained file, dynamic batch, checked.

Inputs are the inference service's (``numeric`` float32 ``[batch, n]``, ``categorical``
int64 ``[batch, c]``; an input with no columns is left out, as the trainer's export
does), the output is the spec's (``scores`` float32 ``[batch, actions]``). torch's
TorchScript exporter at opset 17 writes a single file (the dynamo exporter needs
onnxscript, not shipped here, and writes weights to a sidecar unless told not to). ONNX
Runtime then scores the given rows; a difference from torch beyond the tolerance fails.
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

OPSET = 17
TOLERANCE = 1e-4
"""Allowed |onnx - torch| per score, relative to max(1, |score|)."""


class ExportError(Exception):
    """The exported graph is unusable (sidecar data, or scores that differ from torch)."""


@dataclass(frozen=True)
class ExportedScorer:
    """``model.onnx`` of a policy and what it was checked against."""

    onnx_bytes: bytes
    """The self-contained ONNX model."""
    input_names: tuple[str, ...]
    """``numeric`` and/or ``categorical``."""
    parity_max_abs_diff: float
    """Largest |ONNX Runtime - torch| over the check rows."""


class _Graph(nn.Module):
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
        return self.model(numeric, categorical)


def export_scorer(
    model: nn.Module, numeric: np.ndarray, categorical: np.ndarray, *, output: str
) -> ExportedScorer:
    """Export ``model`` and check ONNX Runtime against torch on these rows."""
    graph = _Graph(model.eval(), numeric.shape[1], categorical.shape[1]).eval()
    tensors = {
        "numeric": torch.tensor(numeric, dtype=torch.float32),
        "categorical": torch.tensor(categorical, dtype=torch.int64),
    }
    names = tuple(n for n in ("numeric", "categorical") if tensors[n].shape[1])
    example = tuple(tensors[n] for n in names)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, tuple(t[:2] for t in example), buffer, dynamo=False,
            input_names=list(names), output_names=[output],
            dynamic_axes={**{n: {0: "batch"} for n in names}, output: {0: "batch"}},
            opset_version=OPSET,
        )  # fmt: skip
    data = buffer.getvalue()
    proto = onnx.load_from_string(data)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ExportError("the export wrote external data; the scorer must fit one ONNX file")
    onnx.checker.check_model(proto)
    with torch.no_grad():
        expected = graph(*example).numpy().astype(np.float64)
    actual = run_scorer(data, numeric, categorical, output=output)
    diff = np.abs(actual - expected)
    if len(diff) and not (diff <= TOLERANCE * np.maximum(1.0, np.abs(expected))).all():
        raise ExportError(
            f"ONNX Runtime and torch disagree: max |onnx - torch| = {diff.max():.3g} over "
            f"{len(expected)} rows (opset {OPSET})"
        )
    return ExportedScorer(data, names, float(diff.max()) if len(diff) else 0.0)


def run_scorer(
    onnx_bytes: bytes, numeric: np.ndarray, categorical: np.ndarray, *, output: str
) -> np.ndarray:
    """Scores ``[rows, actions]`` (float64) from the ONNX model, as inference computes them."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    feeds = {
        i.name: (
            numeric.astype(np.float32) if i.name == "numeric" else categorical.astype(np.int64)
        )
        for i in session.get_inputs()
    }
    (scores,) = session.run([output], feeds)
    return np.asarray(scores, dtype=np.float64)
