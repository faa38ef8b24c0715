"""Serving the latest feature values for many entities in one round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument
from services.feature_store.app.cache import DefinitionsCache
from services.feature_store.app.read_plan import OnDemandColumn, ReadPlan, StoredColumn
from services.feature_store.app.values import coerce, from_python, to_python
from services.feature_store.app.windows import WindowReader
from services.feature_store.store import online

_PRESENT = m.FEATURE_STATUS_PRESENT
_NOT_FOUND = m.FEATURE_STATUS_NOT_FOUND
_EXPIRED = m.FEATURE_STATUS_EXPIRED


def entity_key(value: m.Value, join_key: str) -> str:
    """Entity keys are stored as text; INT64 keys by their decimal form."""
    kind = value.WhichOneof("kind")
    if kind == "string_value" and value.string_value:
        return value.string_value
    if kind == "int64_value":
        return str(value.int64_value)
    raise InvalidArgument(f"entity key {join_key!r} values must be non-empty strings or int64")


class OnlineReader:
    def __init__(self, pool: asyncpg.Pool, cache: DefinitionsCache) -> None:
        self._pool = pool
        self._cache = cache
        self._windows = WindowReader(pool)

    async def read(
        self,
        *,
        feature_service: str,
        references: tuple[str, ...],
        entities: Mapping[str, m.RepeatedValue],
        request_data: Mapping[str, m.RepeatedValue],
    ) -> rr.GetOnlineFeaturesResponse:
        plan = await self._cache.plan(feature_service, references)
        rows = _row_count(entities, request_data)
        keys_by_view = []
        for read in plan.views:
            column = entities.get(read.join_key)
            if column is None:
                raise InvalidArgument(
                    f"entities lacks {read.join_key!r}, the join key of {read.view.name!r}"
                )
            keys_by_view.append([entity_key(v, read.join_key) for v in column.values])
        wanted, aggregated = [], []  # stream views: window values computed from tiles
        for read, keys in zip(plan.views, keys_by_view, strict=True):
            if read.view.WhichOneof("source") == "stream_source":
                spec = self._windows.spec(read.view, read.join_key)
                aggregated.extend((spec, key) for key in dict.fromkeys(keys))
            else:
                wanted.extend((read.view.name, read.view.version, key) for key in keys)
        now = datetime.now(UTC)
        stored, windows = await asyncio.gather(
            online.read_rows(self._pool, wanted), self._windows.read(aggregated, now)
        )
        stored.update(windows)
        response = rr.GetOnlineFeaturesResponse(feature_names=plan.feature_names)
        for row in range(rows):
            fetched = [
                _fetch(stored.get((read.view.name, read.view.version, keys[row])), read.ttl_s, now)
                for read, keys in zip(plan.views, keys_by_view, strict=True)
            ]
            _fill(response.results.add(), plan, fetched, request_data, row)
        return response


def _row_count(
    entities: Mapping[str, m.RepeatedValue], request_data: Mapping[str, m.RepeatedValue]
) -> int:
    lengths = {len(c.values) for c in (*entities.values(), *request_data.values())}
    if not entities:
        raise InvalidArgument("entities is empty: pass the join key values of the rows to serve")
    if len(lengths) != 1:
        raise InvalidArgument("every entities and request_data column needs one value per row")
    rows = lengths.pop()
    if rows == 0:
        raise InvalidArgument("entities has no rows")
    if rows > 10_000:
        raise InvalidArgument("at most 10,000 entity rows per call; split the request")
    return rows


def _fetch(
    row: online.OnlineRow | None, ttl_s: float, now: datetime
) -> tuple[Sequence[m.Value], int, Timestamp | None]:
    """(values, status, event time) of one view for one entity."""
    if row is None:
        return (), _NOT_FOUND, None
    stamp = Timestamp()
    stamp.FromDatetime(row.event_time)
    if ttl_s and (now - row.event_time).total_seconds() > ttl_s:
        return (), _EXPIRED, stamp
    return m.FeatureRow.FromString(row.row).values, _PRESENT, stamp


def _fill(
    vector: rr.FeatureVector,
    plan: ReadPlan,
    fetched: list[tuple[Sequence[m.Value], int, Timestamp | None]],
    request_data: Mapping[str, m.RepeatedValue],
    row: int,
) -> None:
    outputs = [_run_step(step, fetched, request_data, row) for step in plan.steps]
    empty = Timestamp()
    for column in plan.columns:
        if isinstance(column, StoredColumn):
            values, status, stamp = fetched[column.view_index]
            present = status == _PRESENT and column.feature_index < len(values)
            vector.values.append(values[column.feature_index] if present else m.Value())
            vector.statuses.append(status if present or status != _PRESENT else _NOT_FOUND)
            vector.event_times.append(stamp or empty)
        else:
            assert isinstance(column, OnDemandColumn)
            vector.values.append(outputs[column.step_index][column.output])
            vector.statuses.append(_PRESENT)
            vector.event_times.append(empty)


def _run_step(step, fetched, request_data, row):  # type: ignore[no-untyped-def]
    inputs: dict[str, object] = {}
    for name, column in step.inputs:
        values, status, _ = fetched[column.view_index]
        present = status == _PRESENT and column.feature_index < len(values)
        inputs[name] = to_python(values[column.feature_index]) if present else None
    for request_field in step.view.request_fields:
        column = request_data.get(request_field.name)
        if column is None:
            raise InvalidArgument(
                f"request_data lacks {request_field.name!r}, needed by on-demand view "
                f"{step.view.name!r}"
            )
        inputs[request_field.name] = to_python(
            coerce(column.values[row], request_field.type, f"request_data[{request_field.name!r}]")
        )
    try:
        result = step.function(inputs)
    except Exception as exc:
        raise InvalidArgument(
            f"on-demand view {step.view.name!r} failed on row {row}: {type(exc).__name__}: {exc}"
        ) from exc
    return {
        f.name: from_python(result.get(f.name), f.type, f"on-demand view {step.view.name!r}")
        for f in step.view.features
    }
