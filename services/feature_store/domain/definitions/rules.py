"""Checking a repository of definitions and completing what the server derives.

Every rule here raises InvalidArgument naming the definition and what to fix.
Stream views get their features from their aggregations (typed by function).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from google.protobuf.duration_pb2 import Duration

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.keys import join_keys_of
from services.feature_store.domain.names import FeatureRef, check_name
from services.feature_store.domain.on_demand.runner import compile_on_demand
from services.feature_store.domain.streaming.aggregation import (
    MAX_SEQUENCE,
    aggregation_features,
)
from services.feature_store.domain.values import is_list, value_type_of

_NUMERIC = {
    m.VALUE_TYPE_INT64,
    m.VALUE_TYPE_FLOAT64,
    m.VALUE_TYPE_INT64_LIST,
    m.VALUE_TYPE_FLOAT64_LIST,
}
"""Types a range applies to (to every element of a list)."""
_DEFAULT_TILE_S = 60
_DEFAULT_LATENESS_S = 600


def seconds(duration: Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def validate_repository(
    repository: m.FeatureRepository, applied_entities: Iterable[m.Entity]
) -> m.FeatureRepository:
    """A checked copy of ``repository`` with server-derived fields filled in."""
    checked = m.FeatureRepository()
    checked.CopyFrom(repository)
    entities = {e.name: e for e in applied_entities}
    _unique([e.name for e in checked.entities], "entity")
    for entity in checked.entities:
        _check_entity(entity)
        entities[entity.name] = entity
    _unique([v.name for v in checked.feature_views], "feature view")
    views = {}
    for view in checked.feature_views:
        _check_view(view, entities)
        views[view.name] = view
    _unique(
        [v.name for v in checked.on_demand_views] + list(views), "feature view or on-demand view"
    )
    for on_demand in checked.on_demand_views:
        _check_on_demand(on_demand, views)
    _unique([s.name for s in checked.feature_services], "feature service")
    return checked


def check_service_references(
    service: m.FeatureService,
    views: dict[str, m.FeatureView],
    on_demand: dict[str, m.OnDemandFeatureView],
) -> None:
    if not service.features:
        raise InvalidArgument(f"feature service {service.name!r} lists no features")
    selected: set[str] = set()
    for text in service.features:
        ref = FeatureRef.parse(text)
        fields = _fields_of(ref.view, views, on_demand, f"feature service {service.name!r}")
        if ref.feature != "*" and ref.feature not in fields:
            raise InvalidArgument(
                f"feature service {service.name!r}: {ref.view!r} has no feature {ref.feature!r}; "
                f"it has {sorted(fields)}"
            )
        for feature in sorted(fields) if ref.feature == "*" else [ref.feature]:
            if f"{ref.view}:{feature}" in selected:
                raise InvalidArgument(
                    f"feature service {service.name!r} selects {ref.view}:{feature} more than "
                    "once; list each feature once (a 'view:*' already selects all of the view's)"
                )
            selected.add(f"{ref.view}:{feature}")


def _fields_of(
    view_name: str,
    views: dict[str, m.FeatureView],
    on_demand: dict[str, m.OnDemandFeatureView],
    where: str,
) -> dict[str, m.Field]:
    if view_name in views:
        return {f.name: f for f in views[view_name].features}
    if view_name in on_demand:
        return {f.name: f for f in on_demand[view_name].features}
    raise InvalidArgument(f"{where} refers to unknown feature view {view_name!r}")


def _unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidArgument(f"{what} {name!r} is defined twice; names must be unique")
        seen.add(name)


def _check_entity(entity: m.Entity) -> None:
    check_name(entity.name, "entity")
    where = f"entity {entity.name!r}"
    if entity.join_keys:
        _check_composite_key(entity, where)
    else:
        check_name(entity.join_key, f"{where} join_key")
        if entity.key_types:
            raise InvalidArgument(
                f"{where}: key_types types the parts of join_keys; a single join_key's type "
                "is key_type"
            )
    if entity.key_types and entity.key_type == m.VALUE_TYPE_UNSPECIFIED:
        entity.key_type = entity.key_types[0]
    for key_type in (entity.key_type, *entity.key_types):
        if key_type not in (m.VALUE_TYPE_STRING, m.VALUE_TYPE_INT64):
            raise InvalidArgument(f"{where}: key_type and key_types must be STRING or INT64")


def _check_composite_key(entity: m.Entity, where: str) -> None:
    """join_keys: distinct names, exclusive with join_key; one name is normalized to
    join_key (one form per key, so an unchanged key plans as unchanged); key_types, if
    given, one per key."""
    if entity.join_key:
        raise InvalidArgument(
            f"{where}: set join_key (one key) or join_keys (a composite key), not both"
        )
    for name in entity.join_keys:
        check_name(name, f"{where} join_keys")
    _unique(list(entity.join_keys), f"{where} join key")
    if entity.key_types and len(entity.key_types) != len(entity.join_keys):
        raise InvalidArgument(
            f"{where}: key_types has {len(entity.key_types)} types for "
            f"{len(entity.join_keys)} join_keys; give one per key, or none (key_type for all)"
        )
    if len(entity.join_keys) == 1:
        entity.join_key = entity.join_keys[0]
        if entity.key_types:
            entity.key_type = entity.key_types[0]
        del entity.join_keys[:]
        del entity.key_types[:]
    elif entity.key_types and len(set(entity.key_types)) == 1:
        entity.key_type = entity.key_types[0]  # one type for every part: key_type says it
        del entity.key_types[:]


def _check_fields(fields: Iterable[m.Field], where: str) -> None:
    names = []
    for field in fields:
        check_name(field.name, f"{where} field")
        names.append(field.name)
        if field.type == m.VALUE_TYPE_UNSPECIFIED:
            raise InvalidArgument(f"{where} field {field.name!r} needs a type")
        if field.type not in m.ValueType.values():
            raise InvalidArgument(f"{where} field {field.name!r}: unknown type {field.type}")
        for expectation in field.expectations:
            _check_expectation(expectation, field, where)
    _unique(names, f"{where} field")


def _check_expectation(expectation: m.Expectation, field: m.Field, where: str) -> None:
    rule = expectation.WhichOneof("rule")
    if rule is None:
        raise InvalidArgument(f"{where} field {field.name!r} has an empty expectation")
    if rule == "range":
        if field.type not in _NUMERIC:
            raise InvalidArgument(f"{where} field {field.name!r}: a range needs a numeric type")
        bounds = [b for b in (expectation.range.min, expectation.range.max) if b is not None]
        if any(not math.isfinite(b) for b in bounds):
            raise InvalidArgument(f"{where} field {field.name!r}: range bounds must be finite")
        both = expectation.range.HasField("min") and expectation.range.HasField("max")
        if both and expectation.range.min > expectation.range.max:
            raise InvalidArgument(f"{where} field {field.name!r}: range min exceeds max")
    if rule == "length":
        if not is_list(field.type):
            raise InvalidArgument(f"{where} field {field.name!r}: a length needs a list type")
        limits = expectation.length
        if any(limits.HasField(bound) and getattr(limits, bound) < 0 for bound in ("min", "max")):
            raise InvalidArgument(f"{where} field {field.name!r}: length bounds must be >= 0")
        if limits.HasField("min") and limits.HasField("max") and limits.min > limits.max:
            raise InvalidArgument(f"{where} field {field.name!r}: length min exceeds max")
    if rule == "allowed_values":
        if is_list(field.type):
            raise InvalidArgument(
                f"{where} field {field.name!r}: allowed_values is for scalar fields; a list "
                "field takes length and (numeric lists) range"
            )
        for value in expectation.allowed_values.values:
            if value_type_of(value) != field.type:
                raise InvalidArgument(
                    f"{where} field {field.name!r}: allowed value {value} is not of the "
                    "field's type"
                )


_RESERVED_COLUMNS = {"entity_key", "event_time", "created_time"}
_MAX_VIEW_NAME = 48  # views name their offline tables: log_<view>_v<version>


def _check_view(view: m.FeatureView, entities: dict[str, m.Entity]) -> None:
    check_name(view.name, "feature view")
    where = f"feature view {view.name!r}"
    if len(view.name) > _MAX_VIEW_NAME:
        raise InvalidArgument(
            f"{where}: names of feature views are at most {_MAX_VIEW_NAME} characters"
        )
    if view.version < 1:
        raise InvalidArgument(f"{where}: version must be >= 1")
    if view.entity not in entities:
        raise InvalidArgument(
            f"{where}: unknown entity {view.entity!r}; define it in the repository"
        )
    if seconds(view.ttl) < 0:
        raise InvalidArgument(f"{where}: ttl must not be negative")
    source = view.WhichOneof("source")
    if source is None:
        raise InvalidArgument(f"{where} needs a source: batch_source, stream_source or push_source")
    if source == "stream_source":
        _complete_stream_view(view, where)
    else:
        if view.aggregations:
            raise InvalidArgument(f"{where}: aggregations need a stream source")
        if not view.features:
            raise InvalidArgument(f"{where} declares no features")
    _check_fields(view.features, where)
    for reserved in _RESERVED_COLUMNS & {f.name for f in view.features}:
        raise InvalidArgument(f"{where}: {reserved!r} is reserved; name the feature differently")
    if source == "batch_source":
        _check_batch_source(view, where)
    _check_key_sources(view, entities[view.entity], where)
    if view.on_violation == m.VIOLATION_POLICY_UNSPECIFIED:
        view.on_violation = m.VIOLATION_POLICY_KEEP


def _check_key_sources(view: m.FeatureView, entity: m.Entity, where: str) -> None:
    """A batch source's entity_columns and a stream source's entity_fields: one per join
    key of the entity (names; exclusive with the single-key form)."""
    source = view.WhichOneof("source")
    if source not in ("batch_source", "stream_source"):
        return
    given = getattr(view, source)
    plural, single = (
        ("entity_columns", "entity_column")
        if source == "batch_source"
        else ("entity_fields", "entity_field")
    )
    names, join_keys = list(getattr(given, plural)), join_keys_of(entity)
    if not names:
        if len(join_keys) > 1 and getattr(given, single):
            raise InvalidArgument(
                f"{where}: entity {entity.name!r} has the composite key {list(join_keys)}; "
                f"name one per key in {source}.{plural} instead of {source}.{single}"
            )
        return
    if getattr(given, single):
        raise InvalidArgument(f"{where}: set {source}.{single} or {source}.{plural}, not both")
    if len(names) != len(join_keys):
        raise InvalidArgument(
            f"{where}: {source}.{plural} names {len(names)} {plural.split('_')[1]} for the "
            f"{len(join_keys)} join keys {list(join_keys)} of entity {entity.name!r}; name one "
            "per key, in order"
        )
    for name in names:
        check_name(name, f"{where} {source}.{plural}")
    _unique(names, f"{where} {source}.{plural} entry")


MAX_QUERY_CHARS = 16_384


def _check_batch_source(view: m.FeatureView, where: str) -> None:
    source = view.batch_source
    if bool(source.table) == bool(source.query.strip()):
        raise InvalidArgument(
            f"{where}: set one of batch_source.table (a table) and batch_source.query "
            "(one read-only SELECT)"
        )
    if source.table:
        parts = source.table.split(".")
        if len(parts) > 2:
            raise InvalidArgument(f"{where}: batch_source.table must be 'table' or 'schema.table'")
        for part in parts:
            check_name(part, f"{where} batch_source table part")
    else:
        _check_query(source, where)
    _check_field_mapping(view, where)
    check_name(source.event_time_column, f"{where} batch_source.event_time_column")
    if source.entity_column:
        check_name(source.entity_column, f"{where} batch_source.entity_column")
    if source.created_time_column:
        check_name(source.created_time_column, f"{where} batch_source.created_time_column")


def _check_query(source: m.BatchSource, where: str) -> None:
    """What can be said of a query source without Postgres (which checks the rest when it
    is planned and applied: one SELECT, no writes, no locks); trailing semicolons go."""
    query = source.query.rstrip()
    while query.endswith(";"):
        query = query[:-1].rstrip()
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidArgument(
            f"{where}: batch_source.query is {len(query)} characters; at most "
            f"{MAX_QUERY_CHARS} (put a long query in a database view and read that as a table)"
        )
    if "\x00" in query:
        raise InvalidArgument(f"{where}: batch_source.query holds a NUL character")
    source.query = query


def _check_field_mapping(view: m.FeatureView, where: str) -> None:
    """Source column -> feature: each column an identifier, each feature declared and
    named by one column at most."""
    features = {f.name for f in view.features}
    mapped: set[str] = set()
    for column, feature in sorted(view.batch_source.field_mapping.items()):
        check_name(column, f"{where} batch_source.field_mapping column")
        if feature not in features:
            raise InvalidArgument(
                f"{where}: batch_source.field_mapping maps {column!r} to {feature!r}, which is "
                f"not one of its features {sorted(features)}"
            )
        if feature in mapped:
            raise InvalidArgument(
                f"{where}: batch_source.field_mapping maps two columns to {feature!r}"
            )
        mapped.add(feature)


def _complete_stream_view(view: m.FeatureView, where: str) -> None:
    stream = view.stream_source
    check_name(stream.source, f"{where} stream_source.source")
    check_name(stream.event_time_field, f"{where} stream_source.event_time_field")
    if stream.entity_field:
        check_name(stream.entity_field, f"{where} stream_source.entity_field")
    if stream.format == m.EVENT_FORMAT_UNSPECIFIED:
        stream.format = m.EVENT_FORMAT_JSON
    if not view.aggregations:
        raise InvalidArgument(f"{where}: a stream view needs at least one aggregation")
    if view.features:
        raise InvalidArgument(
            f"{where}: a stream view's features come from its aggregations; omit them"
        )
    if not view.HasField("tile_size"):
        view.tile_size.FromSeconds(_DEFAULT_TILE_S)
    if not view.HasField("allowed_lateness"):
        view.allowed_lateness.FromSeconds(_DEFAULT_LATENESS_S)
    tile = seconds(view.tile_size)
    if tile <= 0 or tile != int(tile):
        raise InvalidArgument(f"{where}: tile_size must be a positive whole number of seconds")
    for aggregation in view.aggregations:
        _check_aggregation(aggregation, tile, where)
        for name, result_type in aggregation_features(aggregation):
            view.features.add(name=name, type=result_type)


MAX_REACH_S = 36_525 * 86_400
"""How far back a window (with its offset) may reach: 100 years of days, so every tile
start a read computes stays within the years 1-9999."""
_SEQUENCES = {m.AGGREGATION_FUNCTION_LAST_N, m.AGGREGATION_FUNCTION_FIRST_N}
_ELEMENT_TYPES = {
    m.VALUE_TYPE_INT64,
    m.VALUE_TYPE_FLOAT64,
    m.VALUE_TYPE_STRING,
    m.VALUE_TYPE_BOOL,
}


def _check_aggregation(aggregation: m.Aggregation, tile: float, where: str) -> None:
    check_name(aggregation.name, f"{where} aggregation")
    what = f"{where} aggregation {aggregation.name!r}"
    if aggregation.function == m.AGGREGATION_FUNCTION_UNSPECIFIED:
        raise InvalidArgument(f"{what} needs a function")
    if aggregation.function not in m.AggregationFunction.values():
        raise InvalidArgument(f"{what}: unknown function {aggregation.function}")
    _check_sequence(aggregation, what)
    if aggregation.function != m.AGGREGATION_FUNCTION_COUNT and not aggregation.columns:
        check_name(aggregation.column, f"{what} column")
    percentile = aggregation.percentile
    if aggregation.function == m.AGGREGATION_FUNCTION_PERCENTILE:
        if not (math.isfinite(percentile) and 0 <= percentile <= 100):
            raise InvalidArgument(f"{what}: percentile must be from 0 to 100, not {percentile}")
    elif percentile:
        raise InvalidArgument(f"{what}: percentile is only for PERCENTILE aggregations")
    if aggregation.lifetime:
        if aggregation.HasField("window") or aggregation.HasField("offset"):
            raise InvalidArgument(
                f"{what}: a lifetime aggregation has no window and no offset (it reads every "
                "event up to the read time); unset them, or unset lifetime"
            )
        return
    window = seconds(aggregation.window)
    if window <= 0 or window % tile:
        raise InvalidArgument(
            f"{what}: window must be a positive multiple of the tile size ({tile:g}s); "
            "for every event up to the read time set lifetime instead"
        )
    offset = seconds(aggregation.offset)
    if offset < 0 or offset % tile:
        raise InvalidArgument(
            f"{what}: offset must be zero or a positive multiple of the tile size ({tile:g}s)"
        )
    if window + offset > MAX_REACH_S:
        raise InvalidArgument(
            f"{what}: window and offset reach back {(window + offset) / 86400:g} days; at most "
            f"{MAX_REACH_S // 86400} (~100 years): for every event up to the read time set "
            "lifetime instead"
        )


def _check_sequence(aggregation: m.Aggregation, what: str) -> None:
    """n, columns and types: set for the sequence functions (ADR 0021), unset otherwise."""
    function = aggregation.function
    if function not in _SEQUENCES:
        if aggregation.n or aggregation.columns or aggregation.column_types:
            raise InvalidArgument(f"{what}: n and columns are only for LAST_N and FIRST_N")
    elif not 1 <= aggregation.n <= MAX_SEQUENCE:
        raise InvalidArgument(f"{what}: n must be from 1 to {MAX_SEQUENCE}, not {aggregation.n}")
    if aggregation.value_type and function not in (*_SEQUENCES, m.AGGREGATION_FUNCTION_FIRST):
        raise InvalidArgument(f"{what}: value_type is only for FIRST, LAST_N and FIRST_N")
    if aggregation.value_type and aggregation.value_type not in _ELEMENT_TYPES:
        raise InvalidArgument(
            f"{what}: value_type must be INT64, FLOAT64, STRING or BOOL (the event field's type)"
        )
    if not aggregation.columns:
        if aggregation.column_types:
            raise InvalidArgument(f"{what}: column_types goes with columns; use value_type")
        return
    if aggregation.column or aggregation.value_type:
        raise InvalidArgument(
            f"{what}: set column (and value_type) for one list, or columns (and column_types) "
            "for parallel lists, not both"
        )
    for column in aggregation.columns:
        check_name(column, f"{what} columns")
    _unique(list(aggregation.columns), f"{what} column")
    types = list(aggregation.column_types)
    if types and len(types) != len(aggregation.columns):
        raise InvalidArgument(
            f"{what}: column_types needs one type per column ({len(aggregation.columns)}), or "
            "none (all FLOAT64)"
        )
    if any(kind not in _ELEMENT_TYPES for kind in types):
        raise InvalidArgument(f"{what}: column_types must be INT64, FLOAT64, STRING or BOOL")


_SCALARS_ONLY = (
    "on-demand views read and produce scalars (list features are served as they are, ADR 0021)"
)


def _check_on_demand(view: m.OnDemandFeatureView, views: dict[str, m.FeatureView]) -> None:
    check_name(view.name, "on-demand view")
    where = f"on-demand view {view.name!r}"
    if view.version < 1:
        raise InvalidArgument(f"{where}: version must be >= 1")
    for text in view.inputs:
        ref = FeatureRef.parse(text)
        fields = _fields_of(ref.view, views, {}, where)
        if ref.feature == "*" or ref.feature not in fields:
            raise InvalidArgument(
                f"{where}: input {text!r} must name one feature of a feature view"
            )
        if is_list(fields[ref.feature].type):
            raise InvalidArgument(f"{where}: input {text!r} is a list; {_SCALARS_ONLY}")
    _check_fields(view.request_fields, f"{where} request")
    if not view.features:
        raise InvalidArgument(f"{where} declares no features")
    _check_fields(view.features, where)
    for field in [*view.request_fields, *view.features]:
        if is_list(field.type):
            raise InvalidArgument(f"{where} field {field.name!r} is a list; {_SCALARS_ONLY}")
    compile_on_demand(view)  # raises InvalidArgument if the code does not compile


def breaking_changes(old: m.FeatureView, new: m.FeatureView) -> list[str]:
    """Changes that would make stored values or their readers wrong: they need a new version.

    Stored rows are positional, so within a version features may only be appended
    (and descriptions, expectations, TTL, owner and tags edited).
    """
    reasons = []
    if old.entity != new.entity:
        reasons.append(f"entity: {old.entity} -> {new.entity}")
    if old.WhichOneof("source") != new.WhichOneof("source"):
        reasons.append(f"source kind: {old.WhichOneof('source')} -> {new.WhichOneof('source')}")
    new_fields = list(new.features)
    for i, field in enumerate(old.features):
        if i >= len(new_fields) or new_fields[i].name != field.name:
            reasons.append(f"field {field.name} removed or moved (features may only be appended)")
        elif new_fields[i].type != field.type:
            before, after = m.ValueType.Name(field.type), m.ValueType.Name(new_fields[i].type)
            reasons.append(f"field {field.name}: {before} -> {after}")
    if list(old.aggregations) != list(new.aggregations) or old.tile_size != new.tile_size:
        reasons.append("aggregations or tile size changed (they need a backfill)")
    return reasons
