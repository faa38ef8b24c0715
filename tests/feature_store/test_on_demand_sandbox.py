"""On-demand code cannot get out: known escapes refused at apply, runaway code cut off.

Through the real gRPC API against real Postgres: each escape is sent in an
ApplyDefinitions and must come back INVALID_ARGUMENT naming the view and the
construct; each runaway function applies (it is valid Python of the allowed kind) and
must be stopped by the per-row budget or a guard, online and offline, with the service
answering normally right after (docs/adr/0016-feature-store-layers.md).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import grpc
import pyarrow as pa
import pytest

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from lathe.feature_store.v1.service_pb2_grpc import FeatureStoreStub
from libs.sdk.features import Entity, FeatureView, Field, Float64, PushSource, repository_of
from tests.feature_store.helpers import column, python, suffix

NOW = datetime.now(UTC).replace(microsecond=0)
_SLOW_S = 5.0
"""A cut-off call must come back well within this (the budget is 50 ms a row)."""

# name -> (source of `def f(row)`, a word the refusal must contain)
ESCAPES = {
    "subclasses walk": (
        "def f(row):\n    return {'y': len(().__class__.__base__.__subclasses__())}\n",
        "__class__",
    ),
    "getattr via builtins": (
        "def f(row):\n    return {'y': getattr(row, '__class__')}\n",
        "getattr",
    ),
    "__builtins__": ("def f(row):\n    b = __builtins__\n    return {'y': 1.0}\n", "__builtins__"),
    "format-string attribute access": (
        "def f(row):\n    return {'y': len('{0.__class__}'.format(row))}\n",
        "format",
    ),
    "format_map": ("def f(row):\n    return {'y': len('{a}'.format_map(row))}\n", "format_map"),
    "type(x).mro()": ("def f(row):\n    return {'y': len(type(row).mro())}\n", "type"),
    "generator frame": (
        "def f(row):\n    g = (x for x in [1])\n    return {'y': g.gi_frame}\n",
        "gi_frame",
    ),
    "f_globals": ("def f(row):\n    return {'y': row.f_globals}\n", "f_globals"),
    "import": ("import os\ndef f(row):\n    return {'y': 1.0}\n", "import"),
    "import inside": ("def f(row):\n    import os\n    return {'y': 1.0}\n", "import"),
    "__import__": ("def f(row):\n    return {'y': __import__('os')}\n", "__import__"),
    "eval": ("def f(row):\n    return {'y': eval('1')}\n", "eval"),
    "global": ("def f(row):\n    global math\n    return {'y': 1.0}\n", "global"),
    "lambda": ("def f(row):\n    g = lambda: 1.0\n    return {'y': g()}\n", "lambda"),
    "nested def": (
        "def f(row):\n    def g():\n        return 1.0\n    return {'y': g()}\n",
        "nested def",
    ),
    "class": ("def f(row):\n    class A:\n        pass\n    return {'y': 1.0}\n", "class"),
    "decorator": ("@staticmethod\ndef f(row):\n    return {'y': 1.0}\n", "decorator"),
    "second function": (
        "def f(row):\n    return {'y': 1.0}\ndef g(row):\n    return {}\n",
        "second function",
    ),
    "private name": ("def f(row):\n    _x = 1.0\n    return {'y': _x}\n", "_x"),
    "bare except": (
        "def f(row):\n    try:\n        pass\n    except:\n        pass\n    return {'y': 1.0}\n",
        "bare except",
    ),
    "finally": (
        "def f(row):\n    try:\n        pass\n    finally:\n        pass\n    return {'y': 1.0}\n",
        "finally",
    ),
    "huge exponent": ("def f(row):\n    return {'y': 10**10**10}\n", "constant"),
    "string multiplication bomb": (
        "def f(row):\n    return {'y': len('a' * 10**10)}\n",
        "constant",
    ),
    "format width bomb": ("def f(row):\n    return {'y': len(f'{1:>999999999}')}\n", "format spec"),
    "%-formatting": ("def f(row):\n    return {'y': len('%s' % row)}\n", "%-formatting"),
    "math.factorial": ("def f(row):\n    return {'y': math.factorial(10**6)}\n", "factorial"),
    "oversized source": ("def f(row):\n" + "    x = 1\n" * 3000 + "    return {}\n", "at most"),
}

# name -> source that applies but must be stopped when it runs
RUNAWAYS = {
    "infinite loop": "def f(row):\n    while True: pass\n",
    "infinite loop, two lines": "def f(row):\n    x = 0\n    while True:\n        x = 1\n",
    "nested comprehension": (
        "def f(row):\n    return {'y': len([i for i in range(9999) for j in range(9999)])}\n"
    ),
    "huge exponent at run time": "def f(row):\n    n = 10\n    return {'y': n ** n ** n}\n",
    "string multiplication bomb at run time": (
        "def f(row):\n    s = 'ab'\n    while True:\n        s = s * 1000\n"
    ),
    "f-string doubling": "def f(row):\n    s = 'ab'\n    while True:\n        s = f'{s}{s}'\n",
    "list doubling": "def f(row):\n    s = [1]\n    while True:\n        s += s\n",
    "shift bomb": "def f(row):\n    n = 1\n    return {'y': n << 10**9}\n",
    "range bomb": "def f(row):\n    return {'y': sum(range(10**12))}\n",
    "recursion": "def f(row):\n    return f(row)\n",
    "catching the guard and looping": (
        "def f(row):\n    while True:\n        try:\n            x = 10 ** (10 ** row['n'])\n"
        "        except ValueError:\n            pass\n"
    ),
}


def _repository(s: str, name: str, source: str, inputs: list[str]) -> m.FeatureRepository:
    loan = Entity(f"loan_{s}", join_key="loan_id")
    terms = FeatureView(
        f"terms_{s}",
        entity=loan,
        source=PushSource(),
        ttl=timedelta(days=1),
        features=[Field("rate", Float64)],
    )
    repository = repository_of([loan, terms])
    repository.on_demand_views.add(
        name=name,
        version=1,
        inputs=inputs,
        request_fields=[m.Field(name="n", type=m.VALUE_TYPE_INT64)],
        features=[m.Field(name="y", type=m.VALUE_TYPE_FLOAT64)],
        source_code=source,
        function_name="f",
    )
    return repository


async def _apply(features: FeatureStoreStub, source: str) -> tuple[str, str]:
    s = suffix()
    name = f"od_{s}"
    await features.ApplyDefinitions(
        rr.ApplyDefinitionsRequest(repository=_repository(s, name, source, [f"terms_{s}:rate"]))
    )
    await features.PushFeatures(
        rr.PushFeaturesRequest(
            feature_view=f"terms_{s}",
            columns={
                "loan_id": column(["L1"]),
                "event_time": column([NOW - timedelta(hours=1)]),
                "rate": column([2.5]),
            },
        )
    )
    return s, name


async def _online(features: FeatureStoreStub, name: str) -> rr.GetOnlineFeaturesResponse:
    return await features.GetOnlineFeatures(
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{name}:y"]),
            entities={"loan_id": column(["L1"])},
            request_data={"n": column([2])},
        )
    )


async def _offline(features: FeatureStoreStub, name: str) -> pa.Table:
    labels = pa.table(
        {
            "loan_id": ["L1"],
            "event_time": pa.array([datetime.now(UTC)], pa.timestamp("us", tz="UTC")),
            "n": pa.array([2], pa.int64()),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, labels.schema) as writer:
        writer.write_table(labels)
    parts = []
    async for response in features.GetHistoricalFeatures(
        rr.GetHistoricalFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"{name}:y"]),
            entity_rows_arrow=sink.getvalue().to_pybytes(),
        )
    ):
        if not response.HasField("snapshot"):
            parts.append(response.arrow_ipc)
    return pa.ipc.open_stream(b"".join(parts)).read_all()


@pytest.mark.parametrize(("source", "construct"), ESCAPES.values(), ids=list(ESCAPES))
async def test_escapes_are_refused_at_apply(
    features: FeatureStoreStub, source: str, construct: str
) -> None:
    s = suffix()
    name = f"od_{s}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await features.ApplyDefinitions(
            rr.ApplyDefinitionsRequest(repository=_repository(s, name, source, []))
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert f"on-demand view {name!r}" in details and construct in details, details
    with pytest.raises(grpc.aio.AioRpcError) as planned:
        await features.PlanDefinitions(
            rr.PlanDefinitionsRequest(repository=_repository(s, name, source, []))
        )
    assert planned.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "plan checks the same"


@pytest.mark.parametrize("source", RUNAWAYS.values(), ids=list(RUNAWAYS))
async def test_runaway_code_is_cut_off_online_and_offline(
    features: FeatureStoreStub, source: str
) -> None:
    _, name = await _apply(features, source)

    for call in (_online, _offline):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as stopped:
            await call(features, name)
        assert time.monotonic() - started < _SLOW_S, f"{call.__name__} was not cut off in time"
        assert stopped.value.code() == grpc.StatusCode.INVALID_ARGUMENT, stopped.value.details()
        details = stopped.value.details() or ""
        assert f"on-demand view {name!r}" in details and "row 0" in details, details

    healthy = await features.GetOnlineFeatures(  # the service carries on at once
        rr.GetOnlineFeaturesRequest(
            feature_list=rr.FeatureList(features=[f"terms_{name.removeprefix('od_')}:rate"]),
            entities={"loan_id": column(["L1"])},
        )
    )
    assert python(healthy.results[0].values[0]) == 2.5


async def test_ordinary_code_runs_the_same_online_and_offline(features: FeatureStoreStub) -> None:
    source = (
        "def f(row: dict) -> dict:\n"
        '    """Plain Python of the allowed kind."""\n'
        "    rate = next(v for k, v in row.items() if k.endswith(':rate'))\n"
        "    steps = [rate * i for i in range(row['n'] + 1) if i % 2 == 0]\n"
        "    label = f'{rate:.2f}/{len(steps)}'\n"
        "    total = 0.0\n"
        "    for step in sorted(steps, reverse=True):\n"
        "        total += math.sqrt(step)\n"
        "    try:\n"
        "        extra = {'a': 1}['b']\n"
        "    except KeyError:\n"
        "        extra = 0\n"
        "    return {'y': total + extra + len(label.split('/')) + 2 ** 3}\n"
    )
    _, name = await _apply(features, source)
    expected = (0.0**0.5 + (2.5 * 2) ** 0.5) + 0 + 2 + 8  # steps [0, 5.0]

    online = await _online(features, name)
    offline = await _offline(features, name)

    assert python(online.results[0].values[0]) == pytest.approx(expected)
    assert offline.column(f"{name}:y").to_pylist() == [python(online.results[0].values[0])]
