"""On-demand features: a pure Python function of request data and stored features.

The definition carries the function's source code. It is checked and rewritten
(``sandbox.py``) and compiled once per definition version, and every row, online (per
request row, app/online/reply.py) or offline (per training row, domain/training.py), is
computed by ``OnDemandFunction.run``: one step budget, one error message, one typing of
the outputs, and one conversion of request fields to their declared types
(``request_value``), so the two paths cannot disagree. Trust model: docs/adr/0016.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.on_demand import guards, sandbox
from services.feature_store.domain.values import coerce, from_python, to_python

_MESSAGE_CHARS = 300


class OnDemandFunction:
    """A checked, compiled on-demand view; ``run`` computes one row at a time."""

    __slots__ = ("_budget", "_function", "_outputs", "_where", "view")

    def __init__(
        self,
        view: m.OnDemandFeatureView,
        function: Callable[[dict[str, Any]], Any],
        budget: guards.StepBudget,
    ) -> None:
        self.view = view
        self._function = function
        self._budget = budget
        self._outputs = [(f.name, f.type) for f in view.features]
        self._where = f"on-demand view {view.name!r}"

    def run(self, inputs: dict[str, Any], row: int) -> list[m.Value]:
        """The view's features (in declared order) for one row's ``inputs`` (input
        reference or request field -> Python value); InvalidArgument naming the view and
        ``row`` when the code fails, runs out of budget or returns what does not fit."""
        self._budget.reset()
        try:
            result = self._function(inputs)
        except guards.BudgetExceeded as exc:
            raise InvalidArgument(
                f"{self._where} was stopped on row {row}: it took {exc} (the per-row budget)"
            ) from None
        except Exception as exc:
            raise InvalidArgument(
                f"{self._where} failed on row {row}: {type(exc).__name__}: {_message(exc)}"
            ) from exc
        if not isinstance(result, dict):
            raise InvalidArgument(
                f"{self._where} returned a {type(result).__name__} on row {row}; "
                "return a dict of feature name -> value"
            )
        values = []
        for name, value_type in self._outputs:
            value = result.get(name)
            if not guards.is_scalar(value):
                raise InvalidArgument(
                    f"{self._where} returned a {type(value).__name__} for {name!r} on row {row}"
                )
            values.append(from_python(value, value_type, f"{self._where} feature {name!r}"))
        return values

    @staticmethod
    def request_value(field: m.Field, value: m.Value, where: str) -> Any:
        """A request field's value as the function sees it: converted to the field's
        declared type (an integer for a FLOAT64 field becomes a float, other mismatches
        are InvalidArgument naming ``where``). Online request data and offline label
        columns both come through here, so the function sees the same values."""
        return to_python(coerce(value, field.type, where))


def compile_on_demand(view: m.OnDemandFeatureView) -> OnDemandFunction:
    """The view's function, checked and ready to ``run``; InvalidArgument if the code is
    missing, breaks the sandbox's rules or does not compile."""
    where = f"on-demand view {view.name!r}"
    if not view.function_name or not view.source_code:
        raise InvalidArgument(f"{where} needs source_code and function_name")
    tree = sandbox.checked_tree(view.source_code, view.function_name, where)
    budget = guards.StepBudget()
    namespace = guards.namespace(budget)
    try:
        # Runs only the checked ``def`` statement: no user code executes here.
        exec(compile(tree, f"<on-demand view {view.name}>", "exec"), namespace)
    except Exception as exc:
        raise InvalidArgument(f"{where}: source_code does not load: {exc}") from exc
    return OnDemandFunction(view, namespace[view.function_name], budget)


def _message(exc: Exception) -> str:
    """The exception's text, short, and only when made of scalars (the text of a huge
    container the code raised with could be far larger than the container)."""
    if not all(guards.is_scalar(arg) for arg in exc.args):
        return "(a message that is not text)"
    text = str(exc)
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "…"
