"""On-demand features: a pure Python function of request data and stored features.

The definition carries the function's source code; it is compiled once per
definition version and run the same way online (per request row) and offline
(per training row), so the two can never disagree. The code comes from the
team's reviewed definitions repository: it runs with a reduced set of builtins
and only the `math` module, which prevents accidental I/O and imports, but it is
not a security sandbox.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Mapping
from typing import Any

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument

_ALLOWED_BUILTINS = (
    "abs",
    "all",
    "any",
    "bool",
    "dict",
    "divmod",
    "enumerate",
    "filter",
    "float",
    "frozenset",
    "int",
    "isinstance",
    "iter",
    "len",
    "list",
    "map",
    "max",
    "min",
    "next",
    "pow",
    "range",
    "reversed",
    "round",
    "set",
    "sorted",
    "str",
    "sum",
    "tuple",
    "zip",
    "KeyError",
    "TypeError",
    "ValueError",
    "ZeroDivisionError",
)
_SAFE_BUILTINS = {name: getattr(builtins, name) for name in _ALLOWED_BUILTINS}

OnDemandFunction = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def compile_on_demand(view: m.OnDemandFeatureView) -> OnDemandFunction:
    """The view's function, ready to call with one row (a dict) at a time."""
    where = f"on-demand view {view.name!r}"
    if not view.function_name or not view.source_code:
        raise InvalidArgument(f"{where} needs source_code and function_name")
    namespace: dict[str, Any] = {"__builtins__": _SAFE_BUILTINS, "math": math}
    try:
        code = compile(view.source_code, f"<on-demand view {view.name}>", "exec")
        exec(code, namespace)
    except Exception as exc:  # SyntaxError, or the definition failing at import time
        raise InvalidArgument(f"{where}: source_code does not load: {exc}") from exc
    function = namespace.get(view.function_name)
    if not callable(function):
        raise InvalidArgument(f"{where}: source_code defines no function {view.function_name!r}")
    return function  # type: ignore[no-any-return]
