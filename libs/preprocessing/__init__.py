"""The preprocessing a model was trained with, fitted once and applied everywhere.

``fit`` learns it from a training split (feature order, missing-value fills, numeric
normalisation, categorical vocabularies) and ``PreprocessingSpec.to_json`` writes it as
the versioned ``preprocessing.json`` that travels with a model version. ``Preprocessor``
applies it (compiled once per spec; ``transform`` for one-off calls). The trainer
(evaluation, ONNX parity) and the inference service import this one implementation, so
training and serving cannot disagree on what a model sees.
"""

from libs.preprocessing.apply import EncodedBatch, Preprocessor, transform
from libs.preprocessing.fit import fit
from libs.preprocessing.spec import (
    FORMAT,
    FORMAT_VERSION,
    CategoricalFeature,
    NumericFeature,
    PreprocessingSpec,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CategoricalFeature",
    "EncodedBatch",
    "NumericFeature",
    "PreprocessingSpec",
    "Preprocessor",
    "fit",
    "transform",
]
