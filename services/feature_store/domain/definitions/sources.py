"""Whether a batch source — a table, or a read-only query — can feed its view exactly.

Checked when a view is applied (a problem blocks the change: FAILED_PRECONDITION naming
the column) and again when it is materialized (the table may have changed since). A
feature column must hold values its declared type represents exactly: a ``numeric``
2.750 declared Int64 used to be served as 2, a ``bigint`` 2^53 + 1 declared Float64 as
2^53. Time columns must be ``timestamptz`` (a ``timestamp`` would be read in the
session's time zone). The entity column must give the keys online reads use. A feature
reads the column of its own name unless ``field_mapping`` names another.

A query source's result columns are checked the same way; before that Postgres itself
decides whether the query is one SELECT that neither writes nor locks (store/sources.py
asks it, ``query_refusal`` and ``plan_problems`` say what it answered), ADR 0022.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.keys import join_keys_of, key_types_of

_INTEGERS = frozenset({"int2", "int4", "int8"})
_TEXT = frozenset({"text", "varchar", "bpchar"})
_INSTANT = frozenset({"timestamptz"})
_DECLARED = {
    m.VALUE_TYPE_BOOL: "Bool",
    m.VALUE_TYPE_INT64: "Int64",
    m.VALUE_TYPE_FLOAT64: "Float64",
    m.VALUE_TYPE_STRING: "String",
    m.VALUE_TYPE_TIMESTAMP: "Timestamp",
    m.VALUE_TYPE_INT64_LIST: "Int64List",
    m.VALUE_TYPE_FLOAT64_LIST: "Float64List",
    m.VALUE_TYPE_STRING_LIST: "StringList",
    m.VALUE_TYPE_BOOL_LIST: "BoolList",
}
_ARRAY_ELEMENTS = {
    m.VALUE_TYPE_INT64_LIST: frozenset({"_int2", "_int4", "_int8"}),
    m.VALUE_TYPE_FLOAT64_LIST: frozenset({"_int2", "_int4", "_float4", "_float8"}),
    m.VALUE_TYPE_STRING_LIST: frozenset({"_text", "_varchar", "_bpchar"}),
    m.VALUE_TYPE_BOOL_LIST: frozenset({"_bool"}),
}
"""Postgres array types (``pg_type.typname``) each list type reads exactly (ADR 0021;
an array holding a NULL element, or of more than one dimension, fails the row)."""
_EXACT_DIGITS_INT64 = 18
"""numeric(p, 0) with p <= 18 always fits an int64."""
_EXACT_DIGITS_FLOAT64 = 15
"""A decimal of at most 15 significant digits survives a round trip through a double."""
_ADVICE = {
    m.VALUE_TYPE_BOOL: "boolean",
    m.VALUE_TYPE_INT64: (
        f"smallint, integer, bigint or numeric(p, 0) with p <= {_EXACT_DIGITS_INT64}"
    ),
    m.VALUE_TYPE_FLOAT64: (
        f"smallint, integer, real, double precision or numeric(p, s) with p <= "
        f"{_EXACT_DIGITS_FLOAT64}"
    ),
    m.VALUE_TYPE_STRING: "text, varchar or char",
    m.VALUE_TYPE_TIMESTAMP: "timestamp with time zone",
    m.VALUE_TYPE_INT64_LIST: "smallint[], integer[] or bigint[]",
    m.VALUE_TYPE_FLOAT64_LIST: "smallint[], integer[], real[] or double precision[]",
    m.VALUE_TYPE_STRING_LIST: "text[], varchar[] or char[]",
    m.VALUE_TYPE_BOOL_LIST: "boolean[]",
}


@dataclass(frozen=True)
class SourceColumn:
    """One column of a batch source table, as Postgres describes it."""

    name: str
    type: str
    """The type's internal name (``pg_type.typname``), e.g. ``int8``, ``numeric``."""
    shown: str
    """The type as Postgres writes it, e.g. ``bigint``, ``numeric(10,2)``."""
    precision: int | None = None
    """A numeric's declared precision (None: unconstrained, or not a numeric)."""
    scale: int | None = None


def declared_name(value_type: int) -> str:
    return _DECLARED.get(value_type, m.ValueType.Name(value_type))


def source_problems(
    view: m.FeatureView, entity: m.Entity, columns: Mapping[str, SourceColumn] | None
) -> list[str]:
    """What keeps ``view``'s batch source (``columns``: its table's, None when the table
    does not exist) from feeding it exactly; empty when nothing does."""
    source = view.batch_source
    label = source_label(source)
    if columns is None:
        return [f"batch source table {source.table} does not exist (or cannot be seen)"]
    problems = []
    join_keys = join_keys_of(entity)
    roles = []
    for column, join_key, key_type in zip(
        entity_columns(source, join_keys), join_keys, key_types_of(entity), strict=True
    ):
        integer_keys = key_type == m.VALUE_TYPE_INT64
        roles.append(
            (
                column,
                "the entity column" if len(join_keys) == 1 else f"join key {join_key!r}",
                _INTEGERS if integer_keys else _INTEGERS | _TEXT | {"uuid"},
                "integers" if integer_keys else "text or integers",
            )
        )
    roles.append(
        (source.event_time_column, "the event-time column", _INSTANT, "timestamp with time zone")
    )
    if source.created_time_column:
        roles.append(
            (
                source.created_time_column,
                "the created-time column",
                _INSTANT,
                "timestamp with time zone",
            )
        )
    for name, role, allowed, wanted in roles:
        column = columns.get(name)
        if column is None:
            problems.append(f"batch source {label} has no column {name!r} ({role})")
        elif column.type not in allowed:
            problems.append(
                f"column {name!r} of {label} ({role}) is {column.shown}; it must be {wanted}"
            )
    mapped = feature_columns(view)
    for feature in view.features:
        name = mapped[feature.name]
        column = columns.get(name)
        what = f"{name!r} (feature {feature.name!r})" if name != feature.name else repr(name)
        if column is None:
            problems.append(f"batch source {label} has no column {what} (a feature)")
        elif not lossless(column, feature.type):
            problems.append(
                f"column {what} of {label} is {column.shown} ({column.type}), "
                f"which the declared type {declared_name(feature.type)} cannot hold exactly: "
                f"use {_ADVICE[feature.type]} (cast it in a view), or declare another type"
            )
    return problems


def entity_columns(source: m.BatchSource, join_keys: Sequence[str]) -> tuple[str, ...]:
    """The source columns holding the entity key's parts, one per join key in order:
    ``entity_columns``, else ``entity_column`` (one key), else the join keys' names."""
    if source.entity_columns:
        return tuple(source.entity_columns)
    if source.entity_column:
        return (source.entity_column,)
    return tuple(join_keys)


def source_label(source: m.BatchSource) -> str:
    """How messages name a batch source: its table, or "query"."""
    return source.table or "query"


def feature_columns(view: m.FeatureView) -> dict[str, str]:
    """Feature -> the source column it reads (``field_mapping``, else its own name)."""
    by_feature = {feature: column for column, feature in view.batch_source.field_mapping.items()}
    return {f.name: by_feature.get(f.name, f.name) for f in view.features}


# -- query sources: what Postgres said of them --------------------------------------------

QUERY_PROBE_TIMEOUT_S = 5.0
"""Apply runs a query source for its first row (read-only, to find functions that write)
within this; a query still running then is not refused, only not probed."""
QUERY_TIMEOUT_S = 60.0
"""Each statement Materialize runs on a query source (a page of rows) must finish within
this, in a read-only transaction."""

_WRITE_NODES = {"ModifyTable": "writes rows (INSERT, UPDATE, DELETE or MERGE, also in WITH)"}
_LOCK_NODES = {"LockRows": "locks rows (FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE, FOR KEY SHARE)"}


def plan_problems(plan: object) -> list[str]:
    """What an ``EXPLAIN (FORMAT JSON)`` of a query source shows it would do besides
    reading: write (top level or in a WITH clause) or lock rows."""
    found: dict[str, None] = {}

    def walk(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            kind = node.get("Node Type")
            for nodes in (_WRITE_NODES, _LOCK_NODES):
                if kind in nodes:
                    found[f"the query {nodes[kind]}; a query source may only read"] = None
            for value in node.values():
                walk(value)

    walk(plan)
    return list(found)


def query_refusal(step: str, sqlstate: str, message: str) -> str:
    """Why Postgres refused a query source at ``step`` ("explain", "describe" or "probe"),
    said so that the definition's author knows what to change. ``sqlstate`` is the
    error's SQLSTATE, or "parameters" when the driver found $n parameters."""
    lowered = message.lower()
    if sqlstate == "parameters":
        return "the query takes parameters ($1, ...); a query source has none: write values in"
    if "multiple commands" in lowered:
        return "the query holds more than one statement; a query source is one SELECT"
    if "select ... into" in lowered or "must not contain select into" in lowered:
        return "the query is a SELECT ... INTO (it creates a table); a query source only reads"
    if "data-modifying" in lowered:
        return "the query writes in a WITH clause; a query source may only read"
    if sqlstate == "25006":  # read_only_sql_transaction
        return (
            f"the query tried to write when run read-only ({message}): a function with side "
            "effects, or a locking clause; a query source may only read"
        )
    if sqlstate == "42601" and 'at or near ";"' in message and step != "explain":
        return (
            "the query holds a semicolon Postgres reads as the end of a statement (before a "
            "trailing comment?); a query source is read as a subquery: remove the semicolon"
        )
    if sqlstate == "42601" and step != "explain":
        return f"the query is not a plain SELECT Postgres can read from: {message}"
    if sqlstate == "42601":
        return f"the query is not one SELECT Postgres accepts: {message}"
    return f"Postgres cannot run the query: {message}"


def lossless(column: SourceColumn, value_type: int) -> bool:
    """Whether every value of ``column`` is represented exactly by ``value_type``."""
    kind, precision, scale = column.type, column.precision, column.scale
    if value_type == m.VALUE_TYPE_INT64:
        return kind in _INTEGERS or (
            kind == "numeric"
            and precision is not None
            and precision <= _EXACT_DIGITS_INT64
            and scale == 0
        )
    if value_type == m.VALUE_TYPE_FLOAT64:
        return kind in {"int2", "int4", "float4", "float8"} or (
            kind == "numeric" and precision is not None and precision <= _EXACT_DIGITS_FLOAT64
        )
    if value_type == m.VALUE_TYPE_STRING:
        return kind in _TEXT
    if value_type == m.VALUE_TYPE_BOOL:
        return kind == "bool"
    if value_type == m.VALUE_TYPE_TIMESTAMP:
        return kind == "timestamptz"
    return kind in _ARRAY_ELEMENTS.get(value_type, ())
