"""Predict requests in, checked ``PredictCall``s out; every refusal says what to fix.

Rows are read once, straight into columns (a list per entity key and request feature),
which is what the feature store's request is made of.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument
from libs.grpckit import validation
from services.inference.app.predict import PredictCall

DEFAULT_ALIAS = "production"
_NULL = fs.Value()


def predict_call(
    request: rr.PredictRequest | rr.DecideRequest,
    *,
    max_rows: int,
    time_remaining_s: float | None,
    trace_id: str,
    decide: bool = False,
) -> PredictCall:
    """A Predict request, or a Decide request (the same fields), by column."""
    # The deadline as the call arrived: validating a big request takes time of its own.
    deadline = None if time_remaining_s is None else time.monotonic() + time_remaining_s
    model_name = validation.require(request.model_name, "model_name")
    alias = request.alias or DEFAULT_ALIAS
    rows = request.rows
    if not rows:
        raise InvalidArgument("rows is empty: send at least one row (entity keys and features)")
    if len(rows) > max_rows:
        raise InvalidArgument(
            f"{len(rows)} rows in one request; at most {max_rows}: split it into several"
        )
    join_keys = tuple(sorted(rows[0].entity_keys))
    if not join_keys:
        raise InvalidArgument("rows[0].entity_keys is empty: name the entity, e.g. loan_id")
    keys: dict[str, list[fs.Value]] = {name: [] for name in join_keys}
    features: dict[str, list[fs.Value]] = {}
    decision_ids: list[str] = []
    actions: list[Sequence[str]] = []
    width = len(join_keys)
    only = join_keys[0] if width == 1 else None
    columns = list(keys.items())
    kinds = {name: rows[0].entity_keys[name].WhichOneof("kind") for name in join_keys}
    add_id, add_actions = decision_ids.append, actions.append
    rows_by_id: dict[str, int] = {}
    for i, row in enumerate(rows):
        entity = row.entity_keys
        # ``name in`` before ``entity[name]``: reading a missing key of a map would add it.
        if len(entity) != width or (
            only not in entity if only is not None else not all(n in entity for n in join_keys)
        ):
            raise InvalidArgument(
                f"rows[{i}].entity_keys has {sorted(entity)} but rows[0] has {list(join_keys)}: "
                "every row of a request names the same entity keys"
            )
        for name, column in columns:
            value = entity[name]
            kind = value.WhichOneof("kind")
            if kind != "int64_value" and (kind != "string_value" or not value.string_value):
                raise InvalidArgument(
                    f"rows[{i}].entity_keys[{name!r}] must be a non-empty string or an int64"
                )
            if kind != kinds[name]:
                raise InvalidArgument(
                    f"rows[{i}].entity_keys[{name!r}] is {_KIND_NAMES[kind]} but rows[0]'s is "
                    f"{_KIND_NAMES[kinds[name]]}: a key has one type in every row"
                )
            column.append(value)
        given = row.request_features
        if given or features:
            _request_features(i, given, features)
        decision_id = row.decision_id
        if decision_id and (len(decision_id) > MAX_DECISION_ID or not decision_id.isprintable()):
            raise InvalidArgument(
                f"rows[{i}].decision_id must be at most {MAX_DECISION_ID} printable "
                "characters (e.g. your application's id, or leave it out for a generated one)"
            )
        if decision_id:
            first = rows_by_id.setdefault(decision_id, i)
            if first != i:
                raise InvalidArgument(
                    f"rows[{first}] and rows[{i}] have the same decision_id {decision_id!r}: "
                    "a decision id names one decision (its log and its outcomes)"
                )
        add_id(decision_id)
        add_actions(row.eligible_actions)
    return PredictCall(
        model_name=model_name,
        alias=validation.resource_name(alias, "alias"),
        rows=len(rows),
        join_keys=join_keys,
        entity_keys=keys,
        request_features=features,
        decision_ids=decision_ids,
        eligible_actions=actions,
        deadline=deadline,
        trace_id=trace_id,
        disable_canary=request.disable_canary,
        allow_unknown_entities=request.allow_unknown_entities,
        decide=decide,
    )


MAX_DECISION_ID = 128
"""Characters of a caller's decision id: it keys the decision's row and its logs."""
MAX_REQUEST_FEATURES = 64
"""Distinct request-feature names in one request. Each becomes a column as long as the
request (rows without it hold an empty value), so without a bound a small request of
rows each naming features of their own grows into rows x names values to copy and send."""
_KIND_NAMES = {"int64_value": "an int64", "string_value": "a string", None: "empty"}


def _request_features(
    i: int, given: Mapping[str, fs.Value], columns: dict[str, list[fs.Value]]
) -> None:
    """Append row ``i``'s request features to ``columns`` (empty values where it has none)."""
    for name in given:  # the map's own iterator: .items() goes through a slow Python mixin
        value = given[name]
        if value.WhichOneof("kind") is None:
            raise InvalidArgument(
                f"rows[{i}].request_features[{name!r}] has no value; leave it out instead"
            )
        column = columns.get(name)
        if column is None:
            if len(columns) == MAX_REQUEST_FEATURES:
                raise InvalidArgument(
                    f"rows[{i}].request_features[{name!r}]: the rows name more than "
                    f"{MAX_REQUEST_FEATURES} distinct request features; send only those "
                    "the model's feature service reads"
                )
            column = columns[name] = [_NULL] * i
        column.append(value)
    for column in columns.values():
        if len(column) == i:
            column.append(_NULL)
