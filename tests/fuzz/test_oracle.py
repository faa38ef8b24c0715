"""The fuzz test's own judge: it must see what it claims to see.

A fuzz test whose oracle misses writes or waves INTERNAL through would pass forever,
so these check the oracle against known cases on a real Postgres: writes of each kind
change the fingerprint, and each rule of ``judge`` fires on a call that breaks it and
stays quiet on one that does not.
"""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from libs.config import ServiceName
from tests.fuzz.oracle import (
    FINGERPRINT_FUNCTION,
    Outcome,
    changed_tables,
    fingerprint,
    judge,
    message_shape,
)
from tests.fuzz.server_log import LoggedError
from tests.fuzz.targets import FuzzTarget, discover_targets


def _target(service: ServiceName, method: str) -> FuzzTarget:
    return next(t for t in discover_targets() if t.service == service and t.method.name == method)


CREATE = _target(ServiceName.MODEL_REGISTRY, "CreateModel")
GET = _target(ServiceName.MODEL_REGISTRY, "GetModel")


def _outcome(code: grpc.StatusCode = grpc.StatusCode.OK, **fields: object) -> Outcome:
    values: dict[str, object] = {
        "details": "",
        "replies": (),
        "changed": (),
        "new_events": (),
        "health": "SERVING",
    }
    values.update(fields)
    return Outcome(code=code, **values)  # type: ignore[arg-type]


async def test_the_fingerprint_sees_inserts_updates_deletes_and_new_tables(
    db_pool: asyncpg.Pool, unique_name: str
) -> None:
    await db_pool.execute(FINGERPRINT_FUNCTION)
    await db_pool.execute(
        f"CREATE SCHEMA {unique_name}; CREATE TABLE {unique_name}.t (k int PRIMARY KEY, v text);"
        f"CREATE TABLE {unique_name}.checkpoints (name text)"
    )
    steps = [
        (f"INSERT INTO {unique_name}.t VALUES (1, 'a')", ["t (+1 rows)"]),
        (f"UPDATE {unique_name}.t SET v = 'b'", ["t (rows updated)"]),
        (f"DELETE FROM {unique_name}.t", ["t (-1 rows)"]),
        (f"CREATE TABLE {unique_name}.u (k int)", ["u (created)"]),
        (f"INSERT INTO {unique_name}.checkpoints VALUES ('relay')", []),  # background
        (f"SELECT * FROM {unique_name}.t", []),
    ]
    for statement, expected in steps:
        before = await fingerprint(db_pool, unique_name)
        await db_pool.execute(statement)
        assert changed_tables(before, await fingerprint(db_pool, unique_name)) == expected


@pytest.mark.parametrize(
    ("outcome", "kinds"),
    [
        (_outcome(), []),
        (_outcome(grpc.StatusCode.INVALID_ARGUMENT, details="name is required"), []),
        (_outcome(grpc.StatusCode.UNIMPLEMENTED, details="not yet"), []),
        (_outcome(grpc.StatusCode.INTERNAL, details="internal error in x"), ["status"]),
        (
            _outcome(grpc.StatusCode.UNKNOWN, details="Unexpected <class 'x'>"),
            ["status", "message"],
        ),
        (_outcome(grpc.StatusCode.DEADLINE_EXCEEDED, details="Deadline Exceeded"), ["status"]),
        (_outcome(grpc.StatusCode.NOT_FOUND, details=""), ["message"]),
        (
            _outcome(grpc.StatusCode.NOT_FOUND, details="Traceback (most recent call last)"),
            ["message"],
        ),
        (_outcome(grpc.StatusCode.INVALID_ARGUMENT, details="ValueError: bad"), ["message"]),
        (  # a user's on-demand function failing is quoted by design; ours never is
            _outcome(
                grpc.StatusCode.INVALID_ARGUMENT,
                details="on-demand view 'pay' failed on row 0: TypeError: unsupported operand",
            ),
            [],
        ),
        (
            _outcome(
                grpc.StatusCode.INVALID_ARGUMENT,
                details="on-demand view 'pay' failed on row 0: TypeError: x; KeyError: 'k'",
            ),
            ["message"],
        ),
        (_outcome(health="NOT_SERVING"), ["health"]),
        (
            _outcome(grpc.StatusCode.ABORTED, details="moved", changed=("models (+1 rows)",)),
            ["half-written"],
        ),
        (_outcome(changed=("models (+1 rows)",)), []),
        (_outcome(replies=(b"\xff",)), ["reply"]),
        (
            _outcome(logged=(LoggedError("libs.eventstore.relay", "publish failed", ""),)),
            ["server-log"],
        ),
        (
            _outcome(
                grpc.StatusCode.INTERNAL,
                details="internal error in x",
                logged=(LoggedError("libs.grpckit.interceptor", "unexpected error", "KeyError"),),
            ),
            ["status"],
        ),
    ],
)
def test_judge_flags_each_broken_rule_and_nothing_else(outcome: Outcome, kinds: list[str]) -> None:
    assert [p.kind for p in judge(CREATE, outcome)] == kinds


def test_a_read_only_rpc_that_writes_is_flagged_even_when_it_succeeds() -> None:
    assert GET.read_only and not CREATE.read_only
    wrote = _outcome(changed=("models (rows updated)",))
    assert [p.kind for p in judge(GET, wrote)] == ["read-wrote"]


def test_a_call_may_log_what_it_served_but_only_when_it_succeeded() -> None:
    predict = _target(ServiceName.INFERENCE, "Predict")
    assert predict.read_only
    logs = {
        "changed": ("decisions (+2 rows)", "events (+2 rows)", "streams (+1 rows)"),
        "new_events": ("PredictionLogged (another caller's)",) * 2,
    }
    assert judge(predict, _outcome(**logs)) == []
    failed = _outcome(grpc.StatusCode.NOT_FOUND, details="no such loan", **logs)
    assert [p.kind for p in judge(predict, failed)] == ["half-written"]
    # Logs do not cover any other write made with them.
    with_more = (*logs["changed"], "deployments (rows updated)")
    also = _outcome(changed=with_more, new_events=logs["new_events"])
    assert [p.kind for p in judge(predict, also)] == ["read-wrote"]
    other = _outcome(changed=("events (+1 rows)",), new_events=("DeploymentRequested",))
    assert [p.kind for p in judge(predict, other)] == ["read-wrote"]


def test_messages_that_differ_only_in_values_have_one_shape() -> None:
    first = "no model named 'a-1'; trace 0123456789abcdef0123456789abcdef, 12 rows"
    second = "no model named 'zz'; trace fedcba9876543210fedcba9876543210, 7 rows"
    assert message_shape(first) == message_shape(second)
    assert message_shape(first) != message_shape("no version 3 of 'a'")
