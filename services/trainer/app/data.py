"""A job's data phase: the training set from the feature store, then the preprocessing.

The frozen labels go to ``GetHistoricalFeatures`` (point in time, as Arrow); the answer is
joined with the split and the label by row order, stored as one Arrow blob, and the
preprocessing is fitted on the training rows only and stored as ``preprocessing.json``.
Both digests, the snapshot id and the feature service version the feature store recorded
for the snapshot go into one ``DatasetPrepared`` event: a resumed attempt reads exactly
the same bytes.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from lathe.trainer.v1 import events_pb2 as ev
from lathe.trainer.v1 import message_pb2
from libs.errors import FailedPrecondition
from libs.preprocessing import SequenceColumns, fit
from services.trainer.app.ports import Catalog, Features
from services.trainer.app.submit import _ipc
from services.trainer.domain.job import Job
from services.trainer.store.blobs import BlobStore
from services.trainer.store.labels import EVENT_TIME
from services.trainer.training_columns import LABEL, LABEL_TIME, SPLIT

EVENT_TIME_SUFFIX = "__event_time"
"""The feature store's companion list of a multi-column LAST_N: the events' epoch seconds."""


async def prepare(
    job: Job, blobs: BlobStore, features: Features, catalog: Catalog
) -> ev.DatasetPrepared:
    labels = pa.ipc.open_stream(
        await asyncio.to_thread(blobs.get_bytes, job.labels_sha256)
    ).read_all()
    requested_at = datetime.now(UTC) - timedelta(seconds=5)
    keys = [c for c in labels.column_names if c not in (LABEL, SPLIT)]
    training = await features.training_set(labels.select(keys), job.spec.feature_service)
    if training.table.num_rows != labels.num_rows:
        raise FailedPrecondition(
            f"the feature store returned {training.table.num_rows} rows for "
            f"{labels.num_rows} labels"
        )
    table = training.table.select(list(training.feature_names))
    table = (
        table.append_column(LABEL, labels.column(LABEL))
        .append_column(SPLIT, labels.column(SPLIT))
        .append_column(LABEL_TIME, labels.column(EVENT_TIME))
    )
    train = table.filter(pc.equal(table.column(SPLIT), 0))
    sequences = sequence_columns(job.spec.model, table.schema)
    spec = await asyncio.to_thread(
        fit,
        {name: train.column(name) for name in training.feature_names},
        training.feature_names,
        normalization=job.spec.model.normalization,
        extra={"dataset_snapshot_id": training.snapshot_id, "job_id": job.job_id},
        sequences=sequences,
        reference_times=train.column(LABEL_TIME),
    )
    dataset_sha = await asyncio.to_thread(blobs.put_bytes, _ipc(table))
    preprocessing_sha = await asyncio.to_thread(blobs.put_bytes, spec.to_json())
    version = await catalog.snapshot_version(
        training.snapshot_id, job.spec.feature_service, requested_at
    )
    return ev.DatasetPrepared(
        dataset_snapshot_id=training.snapshot_id,
        feature_service_version=version or job.feature_service_version,
        dataset_sha256=dataset_sha,
        preprocessing_sha256=preprocessing_sha,
        train_rows=train.num_rows,
        validation_rows=table.num_rows - train.num_rows,
        feature_names=training.feature_names,
    )


def sequence_columns(model: message_pb2.ModelSpec, schema: pa.Schema) -> list[SequenceColumns]:
    """The spec's sequences, checked against the training set: each feature is there and
    holds a list per row (the feature store's LAST_N features); FailedPrecondition if not.

    A sequence's event times are read as ages (``SequenceColumns.event_time``): the
    ``<agg>__event_time`` list the feature store serves beside the ``<agg>__<column>``
    lists the spec names is added to the sequence when the training set has it, and a
    ``__event_time`` feature the spec names itself is taken as that sequence's time."""
    out = []
    internal = (LABEL, SPLIT, LABEL_TIME)
    for i, given in enumerate(model.sequences):
        for feature in given.features:
            where = f"spec.model.sequences[{i}] ({given.name!r})"
            if feature not in schema.names:
                raise FailedPrecondition(
                    f"{where} names {feature!r}, which the training set does not have; its "
                    f"features are {[n for n in schema.names if n not in internal]}"
                )
            kind = schema.field(feature).type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
                raise FailedPrecondition(
                    f"{where}: feature {feature!r} is {kind}, not a list per row; a sequence is "
                    "made of list features (e.g. the feature store's LAST_N)"
                )
        features, event_time = _with_event_time(list(given.features), schema, f"{where}")
        out.append(
            SequenceColumns(
                given.name,
                tuple(features),
                given.max_length,
                given.padding or "left",
                event_time,
            )
        )
    named = {f for s in out for f in s.features}
    unnamed = [
        f.name
        for f in schema
        if f.name not in named
        and f.name not in internal
        and (pa.types.is_list(f.type) or pa.types.is_large_list(f.type))
    ]
    if unnamed:
        raise FailedPrecondition(
            f"the feature service serves list features {unnamed} that spec.model.sequences does "
            "not name; a sequence family (sequence_transformer) reads them when they are named "
            "there, other families cannot read lists: train on a feature service without them"
        )
    return out


def _with_event_time(features: list[str], schema: pa.Schema, where: str) -> tuple[list[str], str]:
    """The sequence's features with its event-time list, and that list's name ("" when the
    training set has none: e.g. a LAST_N over one ``column``)."""
    named = [f for f in features if f.endswith(EVENT_TIME_SUFFIX)]
    if len(named) > 1:
        raise FailedPrecondition(
            f"{where} names several event-time lists {named}; a sequence has one event time "
            "(name the columns of one LAST_N aggregation)"
        )
    if named:
        time = named[0]
    else:
        stem = len(EVENT_TIME_SUFFIX) - 2  # "<agg>__" of "<agg>__event_time"
        present = [
            n
            for n in schema.names
            if n.endswith(EVENT_TIME_SUFFIX) and all(f.startswith(n[:-stem]) for f in features)
        ]
        if len(present) != 1:
            return features, ""  # none, or lists of several aggregations: no single clock
        time = present[0]
        features = [*features, time]
    kind = schema.field(time).type
    if not (pa.types.is_list(kind) and pa.types.is_floating(kind.value_type)):
        raise FailedPrecondition(
            f"{where}: event times {time!r} are {kind}, not list<double> of epoch seconds"
        )
    return features, time
