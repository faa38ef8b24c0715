"""``preprocessing.json``: the fitted preprocessing as a versioned, self-describing document.

Version 1 holds, in model input order, each numeric feature (its fill for missing values
and its normalisation) and each categorical feature (its vocabulary; index 0 stands for
missing or unseen values). Readers refuse a format or version they do not know rather
than guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FORMAT = "lathe.preprocessing"
FORMAT_VERSION = 1
NORMALIZATIONS = ("quantile", "standard")


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

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.numeric) + tuple(f.name for f in self.categorical)

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys): equal specs give equal bytes, hence equal digests."""
        document = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "inputs": {
                "numeric": [f.name for f in self.numeric],
                "categorical": [f.name for f in self.categorical],
            },
            "numeric": [
                {
                    "name": f.name,
                    "fill": f.fill,
                    "normalization": f.normalization,
                    "mean": f.mean,
                    "std": f.std,
                    "quantiles": list(f.quantiles),
                }
                for f in self.numeric
            ],
            "categorical": [
                {"name": f.name, "vocabulary": list(f.vocabulary)} for f in self.categorical
            ],
            "fitted_rows": self.fitted_rows,
            "extra": self.extra,
        }
        return json.dumps(document, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PreprocessingSpec:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ValueError(f"not a preprocessing spec: format is {document.get('format')!r}")
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"preprocessing spec version {document.get('version')} is not supported by this "
                f"code (it reads version {FORMAT_VERSION}); upgrade the reader"
            )
        numeric = tuple(
            NumericFeature(
                name=f["name"],
                fill=float(f["fill"]),
                normalization=f["normalization"],
                mean=float(f["mean"]),
                std=float(f["std"]),
                quantiles=tuple(float(q) for q in f["quantiles"]),
            )
            for f in document["numeric"]
        )
        for feature in numeric:
            if feature.normalization not in NORMALIZATIONS:
                raise ValueError(f"{feature.name}: unknown normalization {feature.normalization!r}")
        categorical = tuple(
            CategoricalFeature(name=f["name"], vocabulary=tuple(f["vocabulary"]))
            for f in document["categorical"]
        )
        return cls(numeric, categorical, int(document["fitted_rows"]), dict(document["extra"]))
