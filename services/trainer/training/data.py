"""The training set as tensors, converted once per worker from the job's dataset blob."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from libs.preprocessing import PreprocessingSpec, transform
from services.trainer.store.blobs import BlobStore
from services.trainer.training_columns import LABEL, LABEL_TIME, SPLIT


@dataclass(frozen=True)
class SequenceTensors:
    """One sequence input for every row (libs/preprocessing's ``EncodedSequence``)."""

    name: str
    values: torch.Tensor
    """float32 [rows, N, numeric fields]."""
    codes: torch.Tensor
    """int64 [rows, N, categorical fields]."""
    mask: torch.Tensor
    """bool [rows, N]: True where an event is."""


@dataclass(frozen=True)
class Tensors:
    """Every row of the training set, encoded; splits are index tensors into them."""

    numeric: torch.Tensor
    """float32 [rows, numeric features]."""
    categorical: torch.Tensor
    """int64 [rows, categorical features]."""
    labels: torch.Tensor
    """float32 [rows], 0 or 1."""
    train: torch.Tensor
    """int64 row indices of the training split."""
    validation: torch.Tensor
    """int64 row indices of the validation split."""
    feature_types: dict[str, str]
    """Arrow type of each raw feature column (for the signature)."""
    sequences: tuple[SequenceTensors, ...] = ()
    """Event sequences, in the spec's order."""

    def inputs(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model's arguments for ``rows``: numeric, categorical, then per sequence its
        values, codes and mask."""
        parts = [self.numeric[rows], self.categorical[rows]]
        for s in self.sequences:
            parts += [s.values[rows], s.codes[rows], s.mask[rows]]
        return tuple(parts)


def load(
    blobs: BlobStore, dataset_sha256: str, preprocessing_sha256: str
) -> tuple[Tensors, PreprocessingSpec]:
    table = pa.ipc.open_stream(blobs.get_bytes(dataset_sha256)).read_all()
    spec = PreprocessingSpec.from_json(blobs.get_bytes(preprocessing_sha256))
    return encode(table, spec), spec


def encode(table: pa.Table, spec: PreprocessingSpec) -> Tensors:
    references = table.column(LABEL_TIME) if LABEL_TIME in table.column_names else None
    encoded = transform(
        spec,
        {name: table.column(name) for name in spec.feature_names},
        reference_times=references,  # the events' ages are taken at each row's label time
    )
    split = np.asarray(table.column(SPLIT).to_numpy(), dtype=np.int64)
    labels = np.asarray(table.column(LABEL).to_numpy(), dtype=np.float32)
    return Tensors(
        numeric=torch.from_numpy(encoded.numeric),
        categorical=torch.from_numpy(encoded.categorical),
        labels=torch.from_numpy(labels),
        train=torch.from_numpy(np.flatnonzero(split == 0)),
        validation=torch.from_numpy(np.flatnonzero(split == 1)),
        feature_types={name: str(table.schema.field(name).type) for name in spec.feature_names},
        sequences=tuple(
            SequenceTensors(
                s.name,
                torch.from_numpy(s.values),
                torch.from_numpy(s.codes),
                torch.from_numpy(s.mask),
            )
            for s in encoded.sequences
        ),
    )
