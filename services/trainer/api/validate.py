"""Request validation: a ``TrainingJobSpec`` in, a ``ValidSpec`` (defaults filled) out.

Every failure is InvalidArgument naming the field and what to put there; the checks that
need the outside world (the feature service, the model, the label query in Postgres) are
the application's (app/submit.py).
"""

from __future__ import annotations

import math
import os
import re
from datetime import UTC

from google.protobuf.json_format import MessageToDict

from lathe.trainer.v1 import message_pb2
from libs.errors import InvalidArgument
from libs.grpckit import validation
from libs.preprocessing import PADDINGS, SequenceColumns
from services.trainer.domain.families import ModelFamily, families, family
from services.trainer.domain.label_query import check_label_query
from services.trainer.domain.spec import LabelQuery, Split, ValidSpec

DEFAULT_LABEL_TIMEOUT_S = 60.0
MAX_LABEL_TIMEOUT_S = 3600.0
DEFAULT_JOB_TIMEOUT_S = 6 * 3600.0
MAX_PROCESSES = 64
DEVICES = ("cpu", "cuda")
LAUNCHERS = ("local", "kubernetes")
NORMALIZATIONS = ("quantile", "standard")
MAX_SEQUENCE_LENGTH = 1024
_SEQUENCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


def job_spec(spec: message_pb2.TrainingJobSpec) -> ValidSpec:
    proto = message_pb2.TrainingJobSpec()
    proto.CopyFrom(spec)
    model_name = validation.resource_name(spec.model_name, "spec.model_name")
    feature_service = validation.resource_name(spec.feature_service, "spec.feature_service")
    if spec.feature_service_version < 0:
        raise InvalidArgument("spec.feature_service_version must be >= 0 (0: the latest)")
    labels = _labels(spec.label_source, proto.label_source)
    split = _split(spec.split)
    family_name, hyperparameters, normalization = _model(spec.model, proto.model)
    sequences = _sequences(spec.model, proto.model, family(family_name))
    opt = proto.optimization
    if spec.optimization.epochs < 1:
        raise InvalidArgument(
            f"spec.optimization.epochs must be at least 1, got {spec.optimization.epochs}"
        )
    if spec.optimization.epochs > 10_000:
        raise InvalidArgument("spec.optimization.epochs must be at most 10000")
    opt.batch_size = spec.optimization.batch_size or 256
    if opt.batch_size < 1 or opt.batch_size > 1 << 20:
        raise InvalidArgument(
            f"spec.optimization.batch_size must be in [1, 1048576], got {opt.batch_size}"
        )
    lr = spec.optimization.learning_rate
    if not (math.isfinite(lr) and lr >= 0):
        raise InvalidArgument(
            f"spec.optimization.learning_rate must be a positive number, got {lr}"
        )
    opt.learning_rate = lr or 1e-3
    wd = spec.optimization.weight_decay
    if not (math.isfinite(wd) and wd >= 0):
        raise InvalidArgument(f"spec.optimization.weight_decay must be >= 0, got {wd}")
    if spec.optimization.checkpoint_every_steps < 0:
        raise InvalidArgument(
            "spec.optimization.checkpoint_every_steps must be >= 0 (0: per epoch)"
        )
    res = proto.resources
    res.processes = spec.resources.processes or 1
    if not 1 <= res.processes <= MAX_PROCESSES:
        raise InvalidArgument(
            f"spec.resources.processes must be in [1, {MAX_PROCESSES}], got {res.processes}"
        )
    res.device = spec.resources.device or "cpu"
    if res.device not in DEVICES:
        raise InvalidArgument(
            f"spec.resources.device must be one of {list(DEVICES)}, got {res.device!r}"
        )
    res.threads_per_process = spec.resources.threads_per_process or 1
    if not 1 <= res.threads_per_process <= (os.cpu_count() or 1) * 4:
        raise InvalidArgument(
            "spec.resources.threads_per_process must be between 1 and 4x the CPUs"
        )
    res.launcher = spec.resources.launcher or "local"
    if res.launcher not in LAUNCHERS:
        raise InvalidArgument(
            f"spec.resources.launcher must be one of {list(LAUNCHERS)}, got {res.launcher!r}"
        )
    timeout = (
        spec.resources.timeout.ToTimedelta().total_seconds()
        if spec.resources.HasField("timeout")
        else DEFAULT_JOB_TIMEOUT_S
    )
    if timeout <= 0:
        raise InvalidArgument("spec.resources.timeout must be positive")
    res.timeout.FromSeconds(math.ceil(timeout))
    validation.tags(spec.tags, "spec.tags")
    if opt.batch_size < res.processes:
        raise InvalidArgument(
            f"spec.optimization.batch_size ({opt.batch_size}) must be at least the number of "
            f"processes ({res.processes}): it is split evenly across them"
        )
    return ValidSpec(
        proto=proto,
        model_name=model_name,
        feature_service=feature_service,
        feature_service_version=spec.feature_service_version,
        labels=labels,
        split=split,
        family=family_name,
        hyperparameters=hyperparameters,
        normalization=normalization,
        epochs=opt.epochs,
        batch_size=opt.batch_size,
        learning_rate=opt.learning_rate,
        weight_decay=opt.weight_decay,
        checkpoint_every_steps=opt.checkpoint_every_steps,
        seed=spec.seed,
        processes=res.processes,
        device=res.device,
        threads_per_process=res.threads_per_process,
        launcher=res.launcher,
        timeout_s=float(res.timeout.seconds),
        sequences=sequences,
    )


def _labels(source: message_pb2.LabelSource, out: message_pb2.LabelSource) -> LabelQuery:
    try:
        sql = check_label_query(source.query)
    except ValueError as error:
        raise InvalidArgument(str(error)) from None
    out.label_column = source.label_column or "label"
    out.time_column = source.time_column or "label_time"
    if out.label_column == out.time_column:
        raise InvalidArgument("label_source.label_column and time_column must differ")
    timeout = (
        source.timeout.ToTimedelta().total_seconds()
        if source.HasField("timeout")
        else DEFAULT_LABEL_TIMEOUT_S
    )
    if not 0 < timeout <= MAX_LABEL_TIMEOUT_S:
        raise InvalidArgument(
            f"label_source.timeout must be in (0, {MAX_LABEL_TIMEOUT_S:g}] seconds"
        )
    out.timeout.FromMilliseconds(int(timeout * 1000))
    return LabelQuery(sql, out.label_column, out.time_column, timeout)


def _split(split: message_pb2.TimeSplit) -> Split:
    if not split.HasField("validation_start"):
        raise InvalidArgument(
            "spec.split.validation_start is required: labels before it train, labels from it on "
            "validate"
        )
    start = split.validation_start.ToDatetime(tzinfo=UTC)
    train_start = (
        split.train_start.ToDatetime(tzinfo=UTC) if split.HasField("train_start") else None
    )
    end = split.validation_end.ToDatetime(tzinfo=UTC) if split.HasField("validation_end") else None
    if train_start is not None and train_start >= start:
        raise InvalidArgument("spec.split.train_start must be before validation_start")
    if end is not None and end <= start:
        raise InvalidArgument("spec.split.validation_end must be after validation_start")
    return Split(start, train_start, end)


def _model(model: message_pb2.ModelSpec, out: message_pb2.ModelSpec) -> tuple[str, dict, str]:
    if not model.family:
        raise InvalidArgument("spec.model.family is required (e.g. 'mlp' or 'ft_transformer')")
    try:
        chosen = family(model.family)
    except KeyError as error:
        raise InvalidArgument(f"spec.model.family: {error.args[0]}") from None
    try:
        resolved = chosen.resolve(MessageToDict(model.hyperparameters))
    except ValueError as error:
        raise InvalidArgument(f"spec.{error}") from None
    attention = chosen.name in ("ft_transformer", "sequence_transformer")
    if attention and resolved["d_token"] % resolved["n_heads"]:
        raise InvalidArgument(
            f"spec.model.hyperparameters.d_token ({resolved['d_token']}) must be a multiple of "
            f"n_heads ({resolved['n_heads']})"
        )
    out.hyperparameters.Clear()
    out.hyperparameters.update(resolved)
    out.normalization = model.normalization or "quantile"
    if out.normalization not in NORMALIZATIONS:
        raise InvalidArgument(f"spec.model.normalization must be one of {list(NORMALIZATIONS)}")
    return chosen.name, resolved, out.normalization


def _sequences(
    model: message_pb2.ModelSpec, out: message_pb2.ModelSpec, chosen: ModelFamily
) -> tuple[SequenceColumns, ...]:
    """The spec's event sequences, checked; the family must read them (and needs one)."""
    if model.sequences and not chosen.reads_sequences:
        readers = sorted(f.name for f in families() if f.reads_sequences)
        raise InvalidArgument(
            f"spec.model.sequences: family {chosen.name!r} does not read sequences; use one "
            f"that does ({readers}) or remove them"
        )
    if chosen.reads_sequences and not model.sequences:
        raise InvalidArgument(
            f"spec.model.sequences: family {chosen.name!r} reads event sequences; name at least "
            "one (name, features: the list features of one sequence, max_length: N)"
        )
    seen_names: set[str] = set()
    seen_features: dict[str, str] = {}
    result = []
    for i, (given, written) in enumerate(zip(model.sequences, out.sequences, strict=True)):
        where = f"spec.model.sequences[{i}]"
        if not _SEQUENCE_NAME.fullmatch(given.name):
            raise InvalidArgument(
                f"{where}.name must be lower case letters, digits and underscores starting with "
                f"a letter (at most 63), got {given.name!r}"
            )
        if given.name in seen_names:
            raise InvalidArgument(f"{where}.name {given.name!r} is used twice")
        seen_names.add(given.name)
        if not given.features:
            raise InvalidArgument(f"{where}.features must name the sequence's list features")
        for feature in given.features:
            if feature in seen_features:
                raise InvalidArgument(
                    f"{where}.features: {feature!r} is already in sequence "
                    f"{seen_features[feature]!r}; a feature belongs to one sequence"
                )
            seen_features[feature] = given.name
        if not 1 <= given.max_length <= MAX_SEQUENCE_LENGTH:
            raise InvalidArgument(
                f"{where}.max_length must be in [1, {MAX_SEQUENCE_LENGTH}] (N: the newest N "
                f"events are kept), got {given.max_length}"
            )
        written.padding = given.padding or "left"
        if written.padding not in PADDINGS:
            raise InvalidArgument(
                f"{where}.padding must be one of {list(PADDINGS)}, got {given.padding!r}"
            )
        result.append(
            SequenceColumns(given.name, tuple(given.features), given.max_length, written.padding)
        )
    return tuple(result)
