"""Predict requests in, checked ``PredictCall``s out; every refusal says what to fix."""

from __future__ import annotations

import time

from lathe.feature_store.v1 import message_pb2 as fs
from lathe.inference.v1 import request_response_pb2 as rr
from libs.errors import InvalidArgument
from libs.grpckit import validation
from services.inference.app.predict import PredictCall, RowInput

DEFAULT_ALIAS = "production"
_KEY_KINDS = ("string_value", "int64_value")


def predict_call(
    request: rr.PredictRequest,
    *,
    max_rows: int,
    time_remaining_s: float | None,
    trace_id: str,
) -> PredictCall:
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
    request_names: dict[str, None] = {}
    checked = []
    for i, row in enumerate(rows):
        keys = row.entity_keys
        if len(keys) != len(join_keys) or any(k not in keys for k in join_keys):
            raise InvalidArgument(
                f"rows[{i}].entity_keys has {sorted(keys)} but rows[0] has {list(join_keys)}: "
                "every row of a request names the same entity keys"
            )
        for name in join_keys:
            kind = keys[name].WhichOneof("kind")
            if kind not in _KEY_KINDS or (kind == "string_value" and not keys[name].string_value):
                raise InvalidArgument(
                    f"rows[{i}].entity_keys[{name!r}] must be a non-empty string or an int64"
                )
        for name, value in row.request_features.items():
            if value.WhichOneof("kind") is None:
                raise InvalidArgument(
                    f"rows[{i}].request_features[{name!r}] has no value; leave it out instead"
                )
            request_names[name] = None
        checked.append(
            RowInput(keys, row.request_features, row.decision_id, tuple(row.eligible_actions))
        )
    deadline = None
    if time_remaining_s is not None:
        deadline = time.monotonic() + time_remaining_s
    return PredictCall(
        model_name=model_name,
        alias=validation.resource_name(alias, "alias"),
        rows=checked,
        join_keys=join_keys,
        request_feature_names=tuple(request_names),
        deadline=deadline,
        trace_id=trace_id,
        disable_canary=request.disable_canary,
        allow_unknown_entities=request.allow_unknown_entities,
    )


def null() -> fs.Value:
    return fs.Value()
