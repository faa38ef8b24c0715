"""A training job's spec once validated: typed values with every default filled in.

``api/validate.py`` builds it from the request; the application never sees the raw
request. ``proto`` is the normalised spec (defaults written out), recorded in the
``JobSubmitted`` event and hashed into ``digest`` for the version's lineage, so two jobs
with the same digest asked for exactly the same training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lathe.trainer.v1 import message_pb2
from libs.preprocessing import SequenceColumns


@dataclass(frozen=True)
class LabelQuery:
    """The label source, checked to be one SELECT."""

    sql: str
    label_column: str
    """Column holding the label (bool or 0/1)."""
    time_column: str
    """Column holding the label time (timestamptz)."""
    timeout_s: float
    """Statement timeout of the read-only transaction."""


@dataclass(frozen=True)
class Split:
    """Time-based split on the label time (UTC)."""

    validation_start: datetime
    train_start: datetime | None = None
    validation_end: datetime | None = None

    def side(self, at: datetime) -> str | None:
        """``train``, ``validation`` or None (outside both) for a label time."""
        if self.train_start is not None and at < self.train_start:
            return None
        if self.validation_end is not None and at >= self.validation_end:
            return None
        return "train" if at < self.validation_start else "validation"


@dataclass(frozen=True)
class ValidSpec:
    """Everything a job needs, validated."""

    proto: message_pb2.TrainingJobSpec
    """The spec with defaults filled in (what is recorded and digested)."""
    model_name: str
    feature_service: str
    feature_service_version: int
    """0: whichever version is the latest at submit."""
    labels: LabelQuery
    split: Split
    family: str
    hyperparameters: dict[str, Any]
    """Resolved against the family (defaults included)."""
    normalization: str
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    checkpoint_every_steps: int
    seed: int
    processes: int
    device: str
    threads_per_process: int
    launcher: str
    timeout_s: float
    sequences: tuple[SequenceColumns, ...] = ()
    """Event sequences the model reads (list features, oldest first), as the spec names them."""

    @property
    def digest(self) -> str:
        return spec_digest(self.proto)


def spec_digest(spec: message_pb2.TrainingJobSpec) -> str:
    """``sha256:`` of the spec's deterministic protobuf bytes."""
    return "sha256:" + hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()
