"""The feature store from Python: online vectors as rows, training sets as DataFrames.

Wraps the generated stub so an ML engineer passes plain Python and pandas:

    async with grpc.aio.insecure_channel("127.0.0.1:50051") as channel:
        store = FeatureStoreClient(FeatureStoreStub(channel))
        labels = pd.DataFrame({"loan_id": ["LC1", "LC2"], "event_time": [t1, t2]})
        training = await store.get_historical_features(labels, feature_service="underwriting")
        training.dataframe, training.snapshot_id   # point in time, bitemporal
        rows = await store.get_online_features({"loan_id": ["LC1"]}, "underwriting")

Labels can also come from a Postgres table the feature store reads (``LabelTable``), and
definitions are applied, deleted and deprecated, values pushed, batch views materialized
and stream views backfilled from here too (``lathe demo`` does all of it through this
client). A read that selects a deprecated definition warns
(``FeatureDeprecationWarning``, with the reason the feature store sent). Every
change carries a client request id (a fresh one per call unless the caller passes one,
e.g. to retry across processes) and is retried with it after an ambiguous failure
(UNAVAILABLE, DEADLINE_EXCEEDED), so a retry never applies twice (docs/adr/0015).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.retries import DEFAULT_RETRY, RetryPolicy, new_request_id, with_retries

Scalar = (
    bool | int | float | str | datetime | list[bool] | list[int] | list[float] | list[str] | None
)
"""A feature value in Python: a scalar, a list (list features, ADR 0021) or None."""
DEPRECATION_HEADER = "lathe-deprecation"
"""Trailing metadata the feature store answers a read of deprecated definitions with."""


class FeatureDeprecationWarning(UserWarning):
    """A read selected a deprecated feature view, on-demand view or feature service."""


def _warn_deprecations(trailing: object) -> list[str]:
    """Warn once per deprecated definition named in a reply's trailing metadata."""
    found = [unquote(str(value)) for key, value in trailing or () if key == DEPRECATION_HEADER]  # type: ignore[attr-defined]
    for line in found:
        warnings.warn(f"deprecated: {line}", FeatureDeprecationWarning, stacklevel=3)
    return found


@dataclass(frozen=True)
class TrainingSet:
    dataframe: pd.DataFrame
    """The entity rows in their order, with one column per feature."""
    snapshot_id: str
    """``sha256:`` of the data: record it with the model for lineage."""
    feature_names: tuple[str, ...]
    """The features' columns, ``view:feature``, in the order selected."""
    table: pa.Table | None = None
    """The same rows as the Arrow table the feature store sent (no pandas conversion)."""


@dataclass(frozen=True)
class LabelTable:
    """Labels the feature store reads itself from a Postgres table it can reach."""

    table: str
    """``table`` or ``schema.table``."""
    entity_column: str | Mapping[str, str]
    """The column holding the entity's key (the selection's one join key); with several
    join keys (a composite key), join key -> column, e.g. ``{"card_id": "card",
    "merchant_id": "merchant"}`` (a key left out: the column of its own name)."""
    event_time_column: str
    """The column holding each label's time (features are as of it)."""
    columns: Sequence[str] = ()
    """Other columns to return with each row, such as the label itself."""

    def to_proto(self) -> rr.LabelSource:
        return rr.LabelSource(
            table=self.table,
            entity_column=self.entity_column if isinstance(self.entity_column, str) else "",
            entity_columns={} if isinstance(self.entity_column, str) else dict(self.entity_column),
            event_time_column=self.event_time_column,
            columns=list(self.columns),
        )


@dataclass(frozen=True)
class OnlineValue:
    value: Scalar
    status: str
    """``present``, ``not_found`` or ``expired`` (values past their TTL are None)."""
    event_time: datetime | None


class FeatureStoreClient:
    """The feature store from Python. ``metadata`` goes on every call; changes are sent
    with a request id and retried with it as ``retry`` says."""

    def __init__(
        self,
        stub: FeatureStoreStub,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy = DEFAULT_RETRY,
    ):
        self._stub = stub
        self._metadata = tuple(metadata)
        self._retry = retry

    async def apply(
        self, repository: m.FeatureRepository, *, request_id: str = ""
    ) -> list[m.DefinitionChange]:
        """Record a repository of definitions (all or nothing); what changed, per definition."""
        request = rr.ApplyDefinitionsRequest(repository=repository, request_id=request_id)
        response = await self._change(self._stub.ApplyDefinitions, request)
        return list(response.changes)

    async def push(
        self,
        view: str,
        columns: Mapping[str, Sequence[Scalar]],
        *,
        request_id: str = "",
    ) -> rr.PushFeaturesResponse:
        """Write rows into a push-source view: columns by name (the join key, or each
        part of a composite key, ``event_time`` and features), one value per row; rows
        written and quarantined."""
        request = rr.PushFeaturesRequest(
            feature_view=view,
            columns={name: to_column(values) for name, values in columns.items()},
            request_id=request_id,
        )
        return await self._change(self._stub.PushFeatures, request)  # type: ignore[no-any-return]

    async def materialize(
        self,
        view: str,
        *,
        end_time: datetime | None = None,
        start_time: datetime | None = None,
        on_progress: Callable[[rr.MaterializeProgress], None] | None = None,
        request_id: str = "",
    ) -> rr.MaterializeProgress:
        """Load a batch view's new source rows into the stores (event times up to
        ``end_time``; with ``start_time``, re-read rows known since then too); the final
        progress (each one, as it comes, to ``on_progress``; a retry starts over)."""
        request = rr.MaterializeRequest(
            feature_view=view, request_id=request_id or new_request_id()
        )
        if end_time is not None:
            request.end_time.FromDatetime(end_time)
        if start_time is not None:
            request.start_time.FromDatetime(start_time)

        async def attempt() -> rr.MaterializeProgress:
            progress = rr.MaterializeProgress()
            stream = self._stub.Materialize(
                request, metadata=self._metadata, timeout=self._retry.attempt_timeout_s
            )
            async for response in stream:
                progress = response.progress
                if on_progress is not None:
                    on_progress(progress)
            return progress

        return await with_retries(self._retry, attempt)

    async def backfill(
        self, view: str, version: int = 0, *, request_id: str = ""
    ) -> rr.BackfillStreamViewResponse:
        """Recompute a stream view version's aggregates (0: the latest) from its source's
        raw-event log."""
        request = rr.BackfillStreamViewRequest(
            feature_view=view, version=version, request_id=request_id
        )
        return await self._change(self._stub.BackfillStreamView, request)  # type: ignore[no-any-return]

    async def delete(self, kind: str, name: str, *, reason: str = "", request_id: str = "") -> int:
        """Delete a feature view, on-demand view or feature service (``kind``:
        "feature_view", "on_demand_view", "feature_service"), every version; the latest
        version it had. FAILED_PRECONDITION names what still uses it."""
        request = rr.DeleteDefinitionRequest(
            kind=kind, name=name, reason=reason, request_id=request_id
        )
        response = await self._change(self._stub.DeleteDefinition, request)
        return int(response.last_version)

    async def deprecate(
        self, kind: str, name: str, reason: str = "", *, lift: bool = False, request_id: str = ""
    ) -> None:
        """Deprecate a definition, saying what to use instead (reads keep working and
        warn), or ``lift`` its deprecation."""
        request = rr.DeprecateDefinitionRequest(
            kind=kind, name=name, reason=reason, lift=lift, request_id=request_id
        )
        await self._change(self._stub.DeprecateDefinition, request)

    async def _change(self, rpc: Callable[..., Awaitable[Any]], request: Any) -> Any:
        """Send ``request`` with a request id (its own, or a fresh one) until answered."""
        if not request.request_id:
            request.request_id = new_request_id()
        return await with_retries(
            self._retry,
            lambda: rpc(request, metadata=self._metadata, timeout=self._retry.attempt_timeout_s),
        )

    async def get_online_features(
        self,
        entities: Mapping[str, Sequence[str | int]],
        feature_service: str = "",
        *,
        features: Sequence[str] = (),
        request_data: Mapping[str, Sequence[Scalar]] | None = None,
    ) -> list[dict[str, OnlineValue]]:
        """One dict per entity row: feature name -> value, status and event time."""
        request = rr.GetOnlineFeaturesRequest(
            entities={name: to_column(values) for name, values in entities.items()},
            request_data={name: to_column(values) for name, values in (request_data or {}).items()},
        )
        _select(request, feature_service, features)
        call = self._stub.GetOnlineFeatures(request, metadata=self._metadata)
        response = await call
        _warn_deprecations(await call.trailing_metadata())
        rows = []
        for vector in response.results:
            rows.append(
                {
                    name: OnlineValue(
                        from_value(value),
                        m.FeatureStatus.Name(status).removeprefix("FEATURE_STATUS_").lower(),
                        stamp.ToDatetime(tzinfo=UTC) if stamp.seconds or stamp.nanos else None,
                    )
                    for name, value, status, stamp in zip(
                        response.feature_names,
                        vector.values,
                        vector.statuses,
                        vector.event_times,
                        strict=True,
                    )
                }
            )
        return rows

    async def get_historical_features(
        self,
        entity_rows: pd.DataFrame | pa.Table | LabelTable,
        feature_service: str = "",
        *,
        features: Sequence[str] = (),
    ) -> TrainingSet:
        """Each entity row (join key columns, ``event_time``, any other columns such as the
        label; or the rows of a ``LabelTable``) with every feature as of its
        ``event_time``: only values true and already known then, within their TTL."""
        if isinstance(entity_rows, LabelTable):
            request = rr.GetHistoricalFeaturesRequest(label_source=entity_rows.to_proto())
        else:
            request = rr.GetHistoricalFeaturesRequest(entity_rows_arrow=_ipc(entity_rows))
        _select(request, feature_service, features)
        request.request_id = new_request_id()  # its lineage event is recorded once

        async def attempt() -> tuple[rr.DatasetSnapshot | None, list[bytes]]:
            snapshot, parts = None, []
            stream = self._stub.GetHistoricalFeatures(
                request, metadata=self._metadata, timeout=self._retry.attempt_timeout_s
            )
            async for response in stream:
                if response.HasField("snapshot"):
                    snapshot = response.snapshot
                else:
                    parts.append(response.arrow_ipc)
            _warn_deprecations(await stream.trailing_metadata())
            return snapshot, parts

        snapshot, parts = await with_retries(self._retry, attempt)
        if snapshot is None:
            raise RuntimeError("the feature store sent no dataset snapshot")
        result = pa.ipc.open_stream(b"".join(parts)).read_all()
        return TrainingSet(
            result.to_pandas(), snapshot.snapshot_id, tuple(snapshot.feature_names), result
        )


def _ipc(entity_rows: pd.DataFrame | pa.Table) -> bytes:
    table = (
        entity_rows
        if isinstance(entity_rows, pa.Table)
        else pa.Table.from_pandas(entity_rows, preserve_index=False)
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _select(
    request: rr.GetOnlineFeaturesRequest | rr.GetHistoricalFeaturesRequest,
    feature_service: str,
    features: Sequence[str],
) -> None:
    if bool(feature_service) == bool(features):
        raise ValueError("pass a feature_service or a list of features ('view:feature'), not both")
    if feature_service:
        request.feature_service = feature_service
    else:
        request.feature_list.features.extend(features)


def to_column(values: Sequence[Scalar]) -> m.RepeatedValue:
    """A column of entity keys, request data or pushed values."""
    return m.RepeatedValue(values=[to_value(v) for v in values])


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of an int64 value."""


def to_value(obj: Scalar) -> m.Value:
    """A Python value as a typed Value: None (null), bool, int (int64), float, str,
    datetime (naive: UTC) or a list of one of those; numpy's bool, integer and floating
    scalars as the Python ones. Anything else is a ``TypeError`` — never its ``str()``,
    which would send ``np.int64(5)`` as the string "5" (an int64 key then is unknown) or
    a ``Decimal`` as text where a number is declared."""
    obj = _python(obj)
    if obj is None:
        return m.Value()
    if isinstance(obj, bool):
        return m.Value(bool_value=obj)
    if isinstance(obj, int):
        if not INT64_MIN <= obj <= INT64_MAX:
            raise ValueError(f"{obj} does not fit an int64 value")
        return m.Value(int64_value=obj)
    if isinstance(obj, float):
        return m.Value(float64_value=obj)
    if isinstance(obj, str):
        return m.Value(string_value=obj)
    if isinstance(obj, datetime):
        value = m.Value()
        value.timestamp_value.FromDatetime(obj if obj.tzinfo else obj.replace(tzinfo=UTC))
        return value
    if isinstance(obj, list | tuple):
        return _list_value([_python(x) for x in obj])
    kind = type(obj)
    raise TypeError(
        f"a {kind.__module__}.{kind.__qualname__} is not a feature value: pass None, bool, "
        "int, float, str, datetime or a list of one of those (convert it first, e.g. "
        "float(d) for a Decimal, a datetime for a date, array.tolist() for an array)"
    )


def _python(obj: object) -> object:
    """numpy's bool, integer and floating scalars as Python's bool, int and float; any
    other object as it is. numpy is not imported here: if a numpy scalar exists, numpy
    is already loaded."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _list_value(items: list[object] | tuple[object, ...]) -> m.Value:
    """A list typed by its elements (all bools, all ints, numbers, or strings); an empty
    list is sent as an empty int64 list, which the server takes as the declared list type."""
    value = m.Value()
    if all(isinstance(x, bool) for x in items) and items:
        holder = value.bool_list_value
    elif all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        holder = value.int64_list_value
    elif all(isinstance(x, int | float) and not isinstance(x, bool) for x in items):
        holder = value.float64_list_value
        items = [float(x) for x in items]  # type: ignore[arg-type]
    elif all(isinstance(x, str) for x in items):
        holder = value.string_list_value
    else:
        raise ValueError(
            "a list feature value holds booleans, integers, floats or strings (never None)"
        )
    holder.SetInParent()
    holder.values.extend(items)  # type: ignore[attr-defined]
    return value


def from_value(value: m.Value) -> Scalar:
    """A Value as Python (None when null)."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    if kind.endswith("_list_value"):
        return list(getattr(value, kind).values)
    return getattr(value, kind)  # type: ignore[no-any-return]
