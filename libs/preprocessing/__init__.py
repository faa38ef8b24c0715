"""The preprocessing a model was trained with, fitted once and applied everywhere.

``fit`` learns it from a training split (feature order, missing-value fills, numeric
normalisation, categorical vocabularies) and ``PreprocessingSpec.to_json`` writes it as
the versioned ``preprocessing.json`` that travels with a model version. ``Preprocessor``
applies it (compiled once per spec; ``transform`` for one-off calls). The trainer
(evaluation, ONNX parity) and the inference service import this one implementation, so
training and serving cannot disagree on what a model sees. Sequences of events (list
features, oldest first) are fitted and encoded here too: padded, masked, newest N kept.
"""

from libs.preprocessing.apply import (
    CATEGORICAL_INPUT,
    NUMERIC_INPUT,
    EncodedBatch,
    EncodedSequence,
    Preprocessor,
    sequence_inputs,
    transform,
)
from libs.preprocessing.fit import SequenceColumns, fit
from libs.preprocessing.sequences import epoch_seconds, seconds_from_micros
from libs.preprocessing.spec import (
    FORMAT,
    FORMAT_VERSION,
    PADDINGS,
    CategoricalFeature,
    NumericFeature,
    PreprocessingSpec,
    SequenceFeature,
)

__all__ = [
    "CATEGORICAL_INPUT",
    "FORMAT",
    "FORMAT_VERSION",
    "NUMERIC_INPUT",
    "PADDINGS",
    "CategoricalFeature",
    "EncodedBatch",
    "EncodedSequence",
    "NumericFeature",
    "PreprocessingSpec",
    "Preprocessor",
    "SequenceColumns",
    "SequenceFeature",
    "epoch_seconds",
    "fit",
    "seconds_from_micros",
    "sequence_inputs",
    "transform",
]
