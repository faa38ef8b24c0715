"""``preprocessing.json``: the fitted preprocessing as a versioned, self-describing document.

Version 1 holds, in model input order, each numeric feature (its fill for missing values
and its normalisation) and each categorical feature (its vocabulary; index 0 stands for
missing or unseen values). Version 2 adds ``sequences``: an entity's ordered recent
events (several list features of equal length per row, oldest first), each with its
maximum length N, its padding side and per-field numeric/categorical specs of the same
shape as version 1's (ADR 0026). Version 3 adds a sequence's ``event_time``: the field
holding its events' times (the feature store's ``<name>__event_time``, epoch seconds),
which the model reads as the events' *ages* at the row's reference time (label time
offline, the time the features were read online). A spec is written at the lowest
version that holds it; a spec without sequences is still written as version 1,
byte for byte as before, so existing digests and older readers are unaffected; this
reader reads both. Readers refuse a format or version they do not know rather than guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMAT = "lathe.preprocessing"
FORMAT_VERSION = 3
"""The newest version this code reads and writes (it writes the lowest that holds a spec)."""
READABLE_VERSIONS = (1, 2, 3)
NORMALIZATIONS = ("quantile", "standard")
PADDINGS = ("left", "right")


@dataclass(frozen=True)
class NumericFeature:
    """A number the model reads as one float32 column of the ``numeric`` input."""

    name: str
    """The feature's name as the feature store serves it (``view:feature``)."""
    fill: float
    """Replaces a missing value (the training split's median)."""
    normalization: str
    """``quantile`` (to a standard normal through the training quantiles) or ``standard``."""
    mean: float = 0.0
    """``standard``: subtracted (training mean)."""
    std: float = 1.0
    """``standard``: divided by (training standard deviation; 1 when constant)."""
    quantiles: tuple[float, ...] = ()
    """``quantile``: the training split's quantiles at evenly spaced levels."""


@dataclass(frozen=True)
class CategoricalFeature:
    """A category the model reads as one int64 column of the ``categorical`` input."""

    name: str
    """The feature's name as the feature store serves it (``view:feature``)."""
    vocabulary: tuple[str, ...]
    """Known values, most frequent first; value i is encoded as i + 1, anything else as 0."""

    @property
    def cardinality(self) -> int:
        """Embedding rows the model needs: the vocabulary plus the missing/unseen index."""
        return len(self.vocabulary) + 1


@dataclass(frozen=True)
class SequenceFeature:
    """An entity's recent events: list features of equal length per row, oldest first.

    The model reads it as three inputs (``<name>.values`` float32 [rows, N, numeric
    fields], ``<name>.codes`` int64 [rows, N, categorical fields], ``<name>.mask`` bool
    [rows, N], True where an event is); only the newest ``max_length`` events are kept.
    """

    name: str
    """The sequence's name in the job spec (the model's input names derive from it)."""
    max_length: int
    """N: the newest N events are kept, older ones dropped."""
    padding: str
    """``left``: the newest event in slot N-1, padding first; ``right``: events from slot 0."""
    numeric: tuple[NumericFeature, ...]
    """Per-event numbers (list<double>, list<int64>, list<bool> features), fitted over the
    training split's kept events; in the order of ``values``' last axis."""
    categorical: tuple[CategoricalFeature, ...]
    """Per-event categories (list<string> features); in the order of ``codes``' last axis."""
    event_time: str = ""
    """The numeric field holding the events' times (epoch seconds; "" for none): the model
    reads ``reference time - event time``, the event's age in seconds, and that field's
    fill and normalisation were fitted on ages (version 3)."""

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Its list features: numeric fields, then categorical ones."""
        return tuple(f.name for f in self.numeric) + tuple(f.name for f in self.categorical)

    @property
    def fields(self) -> PreprocessingSpec:
        """Its fields as a flat spec: how one event's values are encoded."""
        return PreprocessingSpec(self.numeric, self.categorical)


@dataclass(frozen=True)
class PreprocessingSpec:
    """Everything needed to turn feature values into the model's input tensors."""

    numeric: tuple[NumericFeature, ...]
    """In the order of the ``numeric`` input's columns."""
    categorical: tuple[CategoricalFeature, ...]
    """In the order of the ``categorical`` input's columns."""
    fitted_rows: int = 0
    """Training rows it was fitted on."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (e.g. the dataset snapshot id); ignored by ``transform``."""
    sequences: tuple[SequenceFeature, ...] = ()
    """Event sequences, in the order of the model's sequence inputs (version 2)."""

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Every feature the model reads: scalar numbers, categories, then sequence fields."""
        return (
            tuple(f.name for f in self.numeric)
            + tuple(f.name for f in self.categorical)
            + tuple(name for s in self.sequences for name in s.feature_names)
        )

    @property
    def version(self) -> int:
        """The lowest format version that can hold this spec (what ``to_json`` writes)."""
        if any(s.event_time for s in self.sequences):
            return 3
        return 2 if self.sequences else 1

    @property
    def reads_event_ages(self) -> bool:
        """Whether encoding needs each row's reference time (a sequence has an event time)."""
        return any(s.event_time for s in self.sequences)

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys): equal specs give equal bytes, hence equal digests."""
        inputs: dict[str, Any] = {
            "numeric": [f.name for f in self.numeric],
            "categorical": [f.name for f in self.categorical],
        }
        document: dict[str, Any] = {
            "format": FORMAT,
            "version": self.version,
            "inputs": inputs,
            "numeric": [_numeric_json(f) for f in self.numeric],
            "categorical": [_categorical_json(f) for f in self.categorical],
            "fitted_rows": self.fitted_rows,
            "extra": self.extra,
        }
        if self.sequences:
            inputs["sequences"] = {s.name: list(s.feature_names) for s in self.sequences}
            document["sequences"] = [_sequence_json(s) for s in self.sequences]
        return json.dumps(document, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PreprocessingSpec:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ValueError(f"not a preprocessing spec: format is {document.get('format')!r}")
        if document.get("version") not in READABLE_VERSIONS:
            raise ValueError(
                f"preprocessing spec version {document.get('version')} is not supported by this "
                f"code (it reads versions {list(READABLE_VERSIONS)}); upgrade the reader"
            )
        sequences = tuple(_sequence_from(s) for s in document.get("sequences", ()))
        return cls(
            _numeric_from(document["numeric"]),
            _categorical_from(document["categorical"]),
            int(document["fitted_rows"]),
            dict(document["extra"]),
            sequences,
        )


def _sequence_json(s: SequenceFeature) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": s.name,
        "max_length": s.max_length,
        "padding": s.padding,
        "numeric": [_numeric_json(f) for f in s.numeric],
        "categorical": [_categorical_json(f) for f in s.categorical],
    }
    if s.event_time:  # version 3 only: earlier documents stay byte for byte the same
        item["event_time"] = s.event_time
    return item


def _numeric_json(f: NumericFeature) -> dict[str, Any]:
    return {
        "name": f.name,
        "fill": f.fill,
        "normalization": f.normalization,
        "mean": f.mean,
        "std": f.std,
        "quantiles": list(f.quantiles),
    }


def _categorical_json(f: CategoricalFeature) -> dict[str, Any]:
    return {"name": f.name, "vocabulary": list(f.vocabulary)}


def _numeric_from(items: list[dict[str, Any]]) -> tuple[NumericFeature, ...]:
    numeric = tuple(
        NumericFeature(
            name=f["name"],
            fill=float(f["fill"]),
            normalization=f["normalization"],
            mean=float(f["mean"]),
            std=float(f["std"]),
            quantiles=tuple(float(q) for q in f["quantiles"]),
        )
        for f in items
    )
    for feature in numeric:
        if feature.normalization not in NORMALIZATIONS:
            raise ValueError(f"{feature.name}: unknown normalization {feature.normalization!r}")
    return numeric


def _categorical_from(items: list[dict[str, Any]]) -> tuple[CategoricalFeature, ...]:
    return tuple(
        CategoricalFeature(name=f["name"], vocabulary=tuple(f["vocabulary"])) for f in items
    )


def _sequence_from(item: dict[str, Any]) -> SequenceFeature:
    sequence = SequenceFeature(
        name=item["name"],
        max_length=int(item["max_length"]),
        padding=item["padding"],
        numeric=_numeric_from(item["numeric"]),
        categorical=_categorical_from(item["categorical"]),
        event_time=str(item.get("event_time", "")),
    )
    if sequence.event_time and sequence.event_time not in (f.name for f in sequence.numeric):
        raise ValueError(
            f"sequence {sequence.name}: event_time {sequence.event_time!r} is not one of its "
            "numeric fields"
        )
    if sequence.padding not in PADDINGS:
        raise ValueError(f"sequence {sequence.name}: unknown padding {sequence.padding!r}")
    if sequence.max_length < 1:
        raise ValueError(f"sequence {sequence.name}: max_length must be >= 1")
    return sequence
