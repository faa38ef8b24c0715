"""Bag-of-events summaries of sequence inputs: what a tabular model can see of a history.

The LightGBM baseline (and the bench's MLP comparator) cannot read padded sequences, so
each sequence becomes fixed columns: its event count, and per numeric field the mean,
minimum, maximum and newest value over the events (NaN without events), and per
categorical field the newest event's code. Order beyond "newest" is lost on purpose: this
is the summary-statistics model the sequence transformer is measured against (ADR 0026).
"""

from __future__ import annotations

import numpy as np
import torch

from services.trainer.training.data import Tensors


def summarize(values: np.ndarray, codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 [rows, 1 + 4 x numeric fields + categorical fields] for one sequence."""
    rows, slots = mask.shape
    count = mask.sum(axis=1)
    present = count > 0
    # Slots run oldest to newest with either padding side: the newest is the last kept.
    newest = np.where(present, slots - 1 - np.argmax(mask[:, ::-1], axis=1), 0)
    columns = [count.astype(np.float64)[:, None]]
    if values.shape[2]:
        v = values.astype(np.float64)
        m = mask[:, :, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(m, v, 0.0).sum(axis=1) / count[:, None]
        low = np.where(m, v, np.inf).min(axis=1)
        high = np.where(m, v, -np.inf).max(axis=1)
        last = v[np.arange(rows), newest]
        stats = np.concatenate([mean, low, high, last], axis=1)
        columns.append(np.where(present[:, None], stats, np.nan))
    if codes.shape[2]:
        last_code = codes[np.arange(rows), newest].astype(np.float64)
        columns.append(np.where(present[:, None], last_code, np.nan))
    return np.concatenate(columns, axis=1)


def baseline_numeric(tensors: Tensors, rows: torch.Tensor) -> np.ndarray:
    """The numeric features of ``rows`` followed by every sequence's summary columns."""
    parts = [tensors.numeric[rows].numpy().astype(np.float64)]
    for s in tensors.sequences:
        parts.append(summarize(s.values[rows].numpy(), s.codes[rows].numpy(), s.mask[rows].numpy()))
    return np.concatenate(parts, axis=1)
