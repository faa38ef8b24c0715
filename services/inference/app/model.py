"""A loaded model version: its files, preprocessing and runtime, as the batcher runs it.

Rows reach it as ``RawRows`` (numbers as float64 with NaN for missing, categories as
strings or None, sequence features as one list per row, oldest event first, None for no
events) and each row's reference time (when its features were read: a sequence model
reads its events' ages at it), built per request from the feature store's reply. A
batch concatenates
the requests' rows, encodes them once with the version's ``Preprocessor`` (compiled from
``preprocessing.json`` at load by ``libs.preprocessing``, the trainer's own
implementation) and runs the runtime once; each request gets its rows of the outputs
back, flattened per row in the signature's output order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lathe.feature_store.v1 import message_pb2 as fs
from libs.errors import FailedPrecondition
from libs.preprocessing import (
    CATEGORICAL_INPUT,
    NUMERIC_INPUT,
    PreprocessingSpec,
    Preprocessor,
    seconds_from_micros,
)
from services.inference.batching import CostModel
from services.inference.domain.policies import ServedPolicy
from services.inference.runtimes.base import Runtime

__all__ = ["CATEGORICAL_INPUT", "NUMERIC_INPUT", "LoadedModel", "RawRows", "VersionFiles"]


@dataclass(frozen=True)
class VersionFiles:
    """What a version is, once downloaded and verified."""

    model_name: str
    version: int
    onnx: bytes
    onnx_sha256: str
    preprocessing: PreprocessingSpec
    feature_service: str
    """From the version's lineage; "" when it names none (features are then listed)."""
    feature_service_version: str
    tags: Mapping[str, str]
    policy_json: bytes = b""
    """``policy.json`` when the version carries one (a policy, ADR 0020/0024)."""


@dataclass(frozen=True)
class RawRows:
    """Feature values of some rows, as the model's preprocessing expects them."""

    numeric: np.ndarray
    """float64 [rows, numeric features]; NaN where missing."""
    categorical: tuple[list[str | None], ...]
    """One list per categorical feature."""
    sequences: tuple[tuple[list[object], ...], ...] = ()
    """Per sequence of the spec, per field (``SequenceFeature.feature_names`` order), one
    value per row: a list of the row's events (oldest first) or None (no events)."""
    reference_times: np.ndarray | None = None
    """float64 [rows] epoch seconds: when each row's features were read (the reference
    time of its events' ages); None when the model reads no ages."""

    @property
    def rows(self) -> int:
        return int(self.numeric.shape[0])

    def slice(self, start: int, stop: int) -> RawRows:
        return RawRows(
            self.numeric[start:stop],
            tuple(c[start:stop] for c in self.categorical),
            tuple(tuple(f[start:stop] for f in s) for s in self.sequences),
            None if self.reference_times is None else self.reference_times[start:stop],
        )


@dataclass(eq=False)
class LoadedModel:
    """One version ready to serve (implements ``batching.BatchTarget``)."""

    files: VersionFiles
    runtime: Runtime
    output_names: tuple[str, ...]
    """One per flattened output column."""
    policy: ServedPolicy | None = None
    """For a policy version: its spec and where its scores are (``domain.policies``)."""
    priority: int = 0
    cost: CostModel = field(default_factory=CostModel)
    _slots: dict[tuple[str, ...], tuple[list[int], list[int], list[list[int]]]] = field(
        default_factory=dict
    )
    _shadow: LoadedModel | None = None
    preprocessor: Preprocessor = field(init=False)
    """``preprocessing.json`` compiled once for this version."""

    def __post_init__(self) -> None:
        self.preprocessor = Preprocessor(self.files.preprocessing)

    @property
    def version(self) -> int:
        return self.files.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.files.preprocessing.feature_names

    @property
    def shadow_target(self) -> LoadedModel:
        """The same model as a batch target queued behind serving traffic (one per model)."""
        if self._shadow is None:
            self._shadow = LoadedModel(
                self.files, self.runtime, self.output_names, self.policy, 1, self.cost
            )
        return self._shadow

    # -- rows in ---------------------------------------------------------------------------

    def rows_from_reply(
        self,
        feature_names: Sequence[str],
        vectors: Sequence[fs.FeatureVector],
        read_at_us: int = 0,
    ) -> RawRows:
        """This model's features of ``vectors`` (a GetOnlineFeatures reply's rows), read at
        ``read_at_us`` (epoch microseconds: the rows' reference time)."""
        numeric_at, categorical_at, sequence_at = self._slots_for(tuple(feature_names))
        values: list[float] = []
        add = values.append
        categorical: tuple[list[str | None], ...] = tuple([] for _ in categorical_at)
        for vector in vectors:
            row = vector.values
            for at in numeric_at:
                value = row[at]
                kind = value.WhichOneof("kind")
                if kind == "float64_value":
                    add(value.float64_value)
                elif kind is None:
                    add(_NAN)
                else:
                    add(self._number(value, kind, at, numeric_at))
            for j, at in enumerate(categorical_at):
                value = row[at]
                kind = value.WhichOneof("kind")
                categorical[j].append(None if kind is None else _text(value, kind))
        numeric = np.array(values, dtype=np.float64).reshape(len(vectors), len(numeric_at))
        sequences = tuple(
            tuple([self._events(vector.values[at], at) for vector in vectors] for at in fields)
            for fields in sequence_at
        )
        return RawRows(numeric, categorical, sequences, self._references(read_at_us, len(vectors)))

    def _references(self, read_at_us: int, rows: int) -> np.ndarray | None:
        if not self.files.preprocessing.reads_event_ages:
            return None
        if read_at_us <= 0:
            raise FailedPrecondition(
                f"{self.files.model_name} v{self.version} reads its events' ages and needs the "
                "time its features were read"
            )
        return np.full(rows, seconds_from_micros(read_at_us), dtype=np.float64)

    def _events(self, value: fs.Value, at: int) -> list[object] | None:
        """A sequence feature's events from the online reply (a list value: the feature
        store's LAST_N features, oldest first, ADR 0021); an absent value is none."""
        kind = value.WhichOneof("kind")
        if kind is None:
            return None
        if kind.endswith("_list_value"):
            return list(getattr(value, kind).values)
        raise FailedPrecondition(
            f"{self.files.model_name} v{self.version} reads a sequence feature that arrived as "
            f"{kind}, not as a list of events; serve it as a LAST_N (list) feature"
        )

    def _number(self, value: fs.Value, kind: str, at: int, numeric_at: list[int]) -> float:
        if kind == "int64_value":
            return float(value.int64_value)
        if kind == "bool_value":
            return 1.0 if value.bool_value else 0.0
        name = self.files.preprocessing.numeric[numeric_at.index(at)].name
        raise FailedPrecondition(
            f"feature {name!r} arrived as {kind} but "
            f"{self.files.model_name} v{self.version} was trained on it as a number"
        )

    def rows_from_columns(
        self,
        columns: Mapping[str, Sequence[object]],
        reference_times: np.ndarray | None = None,
    ) -> RawRows:
        """Rows from plain columns (feature name -> values, None for missing), with each
        row's reference time (float64 epoch seconds) when the model reads event ages."""
        spec = self.files.preprocessing
        rows = len(next(iter(columns.values()))) if columns else 0
        numeric = np.full((rows, len(spec.numeric)), np.nan, dtype=np.float64)
        for j, feature in enumerate(spec.numeric):
            for i, value in enumerate(columns[feature.name]):
                if value is not None:
                    numeric[i, j] = float(value)  # type: ignore[arg-type]
        categorical = tuple(
            [None if v is None else str(v) for v in columns[cat.name]] for cat in spec.categorical
        )
        sequences = tuple(
            tuple(list(columns[name]) for name in s.feature_names) for s in spec.sequences
        )
        references = None if reference_times is None else np.asarray(reference_times, np.float64)
        return RawRows(numeric, categorical, sequences, references)

    def _slots_for(self, names: tuple[str, ...]) -> tuple[list[int], list[int], list[list[int]]]:
        known = self._slots.get(names)
        if known is None:
            index = {name: i for i, name in enumerate(names)}
            spec = self.files.preprocessing
            missing = [n for n in spec.feature_names if n not in index]
            if missing:
                raise FailedPrecondition(
                    f"{self.files.model_name} v{self.version} reads features the feature store "
                    f"did not return: {missing}; its feature service no longer serves them"
                )
            known = (
                [index[f.name] for f in spec.numeric],
                [index[c.name] for c in spec.categorical],
                [[index[name] for name in s.feature_names] for s in spec.sequences],
            )
            self._slots[names] = known
        return known

    # -- compute ---------------------------------------------------------------------------

    def run_batch(self, parts: Sequence[RawRows]) -> list[np.ndarray]:
        """Blocking: preprocess and score every part in one runtime call."""
        merged = parts[0] if len(parts) == 1 else _concat(parts)
        scores = self.score(merged)
        out, start = [], 0
        for part in parts:
            out.append(scores[start : start + part.rows])
            start += part.rows
        return out

    def score(self, rows: RawRows) -> np.ndarray:
        """float64 [rows, outputs]: the runtime's outputs for ``rows``."""
        feeds = self.feeds(rows)
        outputs = self.runtime.run(feeds)
        return flatten_outputs(outputs, rows.rows)

    def feeds(self, rows: RawRows) -> dict[str, np.ndarray]:
        """The graph's inputs, by name (``numeric``, ``categorical``, ``<seq>.values`` ...)."""
        arrays = self.preprocessor.encode(
            rows.numeric, rows.categorical, rows.sequences, rows.reference_times
        ).arrays()
        return {name: arrays[name] for name in self.runtime.input_names}


def flatten_outputs(outputs: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """Every output as [rows, k] float64, side by side."""
    parts = [np.asarray(o, dtype=np.float64).reshape(rows, -1) for o in outputs]
    return parts[0] if len(parts) == 1 else np.hstack(parts)


def _concat(parts: Sequence[RawRows]) -> RawRows:
    numeric = np.concatenate([p.numeric for p in parts], axis=0)
    width = len(parts[0].categorical)
    categorical = tuple([v for p in parts for v in p.categorical[j]] for j in range(width))
    sequences = tuple(
        tuple([v for p in parts for v in p.sequences[i][j]] for j in range(len(fields)))
        for i, fields in enumerate(parts[0].sequences)
    )
    references = [p.reference_times for p in parts]
    reference_times = (
        None if any(r is None for r in references) else np.concatenate(references)  # type: ignore[arg-type]
    )
    return RawRows(numeric, categorical, sequences, reference_times)


_NAN = float("nan")


def _text(value: fs.Value, kind: str) -> str:
    if kind == "string_value":
        return value.string_value
    if kind == "int64_value":
        return str(value.int64_value)
    if kind == "bool_value":
        return str(value.bool_value)
    if kind == "float64_value":
        return str(value.float64_value)
    return value.timestamp_value.ToJsonString()
