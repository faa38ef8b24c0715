"""The LightGBM baseline, trained in the same job on the same split and inputs.

It sees exactly the model's encoded inputs: the numbers after filling (normalisation is
monotone, so trees split them as they would the raw values) and the category indices as
LightGBM categoricals. Deterministic: fixed seed, ``deterministic``, pinned threads.
"""

from __future__ import annotations

import lightgbm
import numpy as np

from services.trainer.training.metrics import all_metrics

PARAMS = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
ROUNDS = 300


def lightgbm_baseline(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    seed: int,
    threads: int,
) -> dict[str, float]:
    """Fit on (numeric, categorical, labels) of the training split; metrics on validation."""
    x_train, categorical = _matrix(train[0], train[1])
    x_valid, _ = _matrix(validation[0], validation[1])
    data = lightgbm.Dataset(
        x_train, label=train[2], categorical_feature=categorical or "auto", free_raw_data=True
    )
    params = {**PARAMS, "seed": seed, "num_threads": threads}
    booster = lightgbm.train(params, data, num_boost_round=ROUNDS)
    scores = np.asarray(booster.predict(x_valid), dtype=np.float64)
    return all_metrics(validation[2], scores)


def _matrix(numeric: np.ndarray, categorical: np.ndarray) -> tuple[np.ndarray, list[int]]:
    matrix = np.concatenate([numeric.astype(np.float64), categorical.astype(np.float64)], axis=1)
    columns = list(range(numeric.shape[1], numeric.shape[1] + categorical.shape[1]))
    return matrix, columns
