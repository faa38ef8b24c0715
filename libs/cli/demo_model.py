"""A small credit-default model for the demo, fitted on a feature-store training set.

It stands in for the trainer service until that lands: a logistic regression
fitted with numpy on the features of a point-in-time training set (Lending Club
loans), evaluated on held-out loans, exported to ONNX (never pickle) and checked
with ONNX Runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
import pyarrow as pa
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class DemoModel:
    features: tuple[str, ...]
    onnx_model: bytes
    preprocessing: bytes
    """JSON: feature order, medians for missing values, means and scales."""
    metrics: dict[str, float]
    train_rows: int
    test_rows: int


def fit_default_model(
    training_set: pa.Table, features: tuple[str, ...], *, label: str = "defaulted", seed: int = 7
) -> DemoModel:
    """Fit on a random 70% of the rows, report AUC and log loss on the other 30%."""
    labels = np.asarray(training_set.column(label).to_pylist(), dtype=np.float64)
    raw = np.array(
        [
            [np.nan if v is None else float(v) for v in training_set.column(f).to_pylist()]
            for f in features
        ]
    ).T
    medians = np.nanmedian(raw, axis=0)
    x = np.where(np.isnan(raw), medians, raw)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[: int(0.7 * len(x))], order[int(0.7 * len(x)) :]
    mean, scale = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
    z = (x - mean) / scale

    weights, bias = np.zeros(len(features)), 0.0
    for _ in range(2000):  # full-batch gradient descent with a little L2
        p = 1 / (1 + np.exp(-(z[train] @ weights + bias)))
        gradient = p - labels[train]
        weights -= 0.5 * (z[train].T @ gradient / len(train) + 1e-3 * weights)
        bias -= 0.5 * gradient.mean()

    model = _to_onnx(features, mean, scale, weights, bias)
    scores = _score_with_onnx_runtime(model, x[test])
    expected = 1 / (1 + np.exp(-(z[test] @ weights + bias)))
    np.testing.assert_allclose(scores, expected, rtol=1e-3, atol=1e-5)
    preprocessing = {
        "features": list(features),
        "fill_missing": dict(zip(features, medians.tolist(), strict=True)),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
    }
    return DemoModel(
        features=features,
        onnx_model=model,
        preprocessing=json.dumps(preprocessing, indent=2).encode(),
        metrics={"auc": _auc(labels[test], scores), "log_loss": _log_loss(labels[test], scores)},
        train_rows=len(train),
        test_rows=len(test),
    )


def _to_onnx(
    features: tuple[str, ...], mean: np.ndarray, scale: np.ndarray, weights: np.ndarray, bias: float
) -> bytes:
    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value.astype(np.float32), name)

    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["features", "mean"], ["centered"]),
            helper.make_node("Div", ["centered", "scale"], ["standardized"]),
            helper.make_node("MatMul", ["standardized", "weights"], ["logit_no_bias"]),
            helper.make_node("Add", ["logit_no_bias", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p_default"]),
        ],
        "credit_default_logistic_regression",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(features)])],
        [helper.make_tensor_value_info("p_default", TensorProto.FLOAT, [None, 1])],
        initializer=[
            const("mean", mean),
            const("scale", scale),
            const("weights", weights.reshape(-1, 1)),
            const("bias", np.array([bias])),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _score_with_onnx_runtime(model: bytes, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (scores,) = session.run(["p_default"], {"features": x.astype(np.float32)})
    return scores.reshape(-1).astype(np.float64)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="stable")] = np.arange(1, len(scores) + 1)
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
