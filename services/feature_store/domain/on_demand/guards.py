"""What on-demand code runs with: a few builtins, ``math``, guarded operators, a step budget.

``rewrite.py`` rewrites the checked function so that every loop iteration, comprehension
item and call takes a step from a ``StepBudget``, and so that the operators that can build
a huge object in one go (``**``, ``*``, ``<<``, ``+`` of sequences, ``%`` on text, f-strings) go
through the guards below first. The guards and the budget live in the function's globals
under names starting with ``_``, which the code itself may not name.

Why a step budget rather than a timer: the code runs on the service's event loop, where a
signal or a watchdog thread could not interrupt it (a signal handler runs in the main
thread only, between bytecodes; a thread cannot stop another), and ``sys.settrace`` misses
some loops (``while True: pass`` on one line sends no line events on 3.11) while slowing
every line and displacing debuggers and coverage. Counting steps in the code itself costs
one call per iteration, cannot be switched off from inside (the names are not reachable),
and is deterministic: a row that runs out of steps online runs out offline too. A wall
clock is read every 256 steps as a backstop for steps that are each slow.
"""

from __future__ import annotations

import builtins
import datetime as dt
import math
import operator
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

MAX_STEPS = 10_000
"""Loop iterations, comprehension items and calls one row may take."""
MAX_ROW_SECONDS = 0.05
"""Wall-clock time one row may take (checked every 256 steps)."""
MAX_INT_BITS = 8_192
"""About the largest integer (in bits) ``**``, ``*`` and ``<<`` may produce."""
MAX_LENGTH = 10_000
"""The longest string or sequence ``*``, ``+``, an f-string or ``range`` may produce."""


class OnDemandLimit(ValueError):
    """An operation that would build an object past the limits above."""


class BudgetExceeded(BaseException):
    """A row used up its steps or its time.

    A BaseException, so the code's own ``except`` clauses (which may name only the
    exceptions it is given) cannot swallow it.
    """


class StepBudget:
    """Steps and time left for the row being computed; ``reset`` before each row.

    One per compiled function, used from the event loop only (rows are computed one at
    a time, synchronously), so it needs no lock.
    """

    __slots__ = ("_deadline", "_left", "seconds", "steps")

    def __init__(self, steps: int = MAX_STEPS, seconds: float = MAX_ROW_SECONDS) -> None:
        self.steps = steps
        self.seconds = seconds
        self._left = steps
        self._deadline = 0.0

    def reset(self) -> None:
        self._left = self.steps
        self._deadline = time.perf_counter() + self.seconds

    def step(self) -> bool:
        """Take one step (True, so it can sit in a comprehension's conditions)."""
        self._left -= 1
        if self._left <= 0:
            raise BudgetExceeded(f"more than {self.steps:,} steps (an endless loop?)")
        if not self._left & 0xFF and time.perf_counter() > self._deadline:
            raise BudgetExceeded(f"more than {self.seconds * 1000:.0f} ms")
        return True


_SEQUENCES = (str, bytes, list, tuple)
_CONTAINERS = (list, tuple, dict, set, frozenset)
_SCALARS = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    Decimal,
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
)


def _is_int(value: object) -> bool:
    return isinstance(value, int)


def _too_long(length: int) -> OnDemandLimit:
    return OnDemandLimit(f"a result of {length:,} items or characters (at most {MAX_LENGTH:,})")


def _check_power(base: object, exponent: object) -> None:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:  # type: ignore[operator,arg-type]
        bits = (abs(base).bit_length() - 1) * exponent  # type: ignore[arg-type]
        if bits > MAX_INT_BITS:
            raise OnDemandLimit(f"an integer of about {bits:,} bits (at most {MAX_INT_BITS:,})")


def _check_product(a: object, b: object) -> None:
    if _is_int(a) and _is_int(b):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS:  # type: ignore[attr-defined]
            raise OnDemandLimit(f"an integer of over {MAX_INT_BITS:,} bits")
        return
    for sequence, times in ((a, b), (b, a)):
        if isinstance(sequence, _SEQUENCES) and _is_int(times):
            if len(sequence) * times > MAX_LENGTH:  # type: ignore[operator]
                raise _too_long(len(sequence) * times)  # type: ignore[operator]
            if times > 1 and any(isinstance(item, _CONTAINERS) for item in sequence):  # type: ignore[operator,union-attr]
                raise OnDemandLimit("repeating a sequence of containers (build it in a loop)")


def _check_shift(a: object, b: object) -> None:
    if _is_int(a) and _is_int(b) and b > 0 and a.bit_length() + b > MAX_INT_BITS:  # type: ignore[operator,attr-defined]
        raise OnDemandLimit(f"an integer of over {MAX_INT_BITS:,} bits")


def _check_sum(a: object, b: object) -> None:
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES) and len(a) + len(b) > MAX_LENGTH:
        raise _too_long(len(a) + len(b))


def _check_text_format(a: object, _b: object) -> None:
    if isinstance(a, str | bytes):
        raise OnDemandLimit("%-formatting is not available; use an f-string")


def _guarded(check: Callable[[Any, Any], None], op: Callable[[Any, Any], Any]) -> Callable:
    def guarded(a: Any, b: Any) -> Any:
        check(a, b)
        return op(a, b)

    return guarded


OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "_lathe_pow": _guarded(_check_power, operator.pow),
    "_lathe_mul": _guarded(_check_product, operator.mul),
    "_lathe_lshift": _guarded(_check_shift, operator.lshift),
    "_lathe_add": _guarded(_check_sum, operator.add),
    "_lathe_mod": _guarded(_check_text_format, operator.mod),
    # Augmented assignments keep their in-place meaning (``a += b`` extends a list).
    "_lathe_ipow": _guarded(_check_power, operator.ipow),
    "_lathe_imul": _guarded(_check_product, operator.imul),
    "_lathe_ilshift": _guarded(_check_shift, operator.ilshift),
    "_lathe_iadd": _guarded(_check_sum, operator.iadd),
    "_lathe_imod": _guarded(_check_text_format, operator.imod),
}
"""Guarded binary operators by the global name the rewritten code calls them by."""


def is_scalar(value: object) -> bool:
    """Not a container: formatting it cannot produce far more text than it holds."""
    return isinstance(value, _SCALARS)


def _scalar(value: object) -> object:
    """A value an f-string or ``str()`` may format: not a container (whose text could be
    far larger than itself)."""
    if not is_scalar(value):
        raise OnDemandLimit(f"formatting a {type(value).__name__} (format its items instead)")
    return value


def _sized(text: str) -> str:
    if len(text) > MAX_LENGTH:
        raise _too_long(len(text))
    return text


def _range(*args: int) -> range:
    numbers = builtins.range(*args)
    try:
        length = len(numbers)
    except OverflowError:
        length = MAX_LENGTH + 1
    if length > MAX_LENGTH:
        raise _too_long(length)
    return numbers


def _pow(base: Any, exponent: Any, modulus: Any = None) -> Any:
    if modulus is None:
        _check_power(base, exponent)
        return builtins.pow(base, exponent)
    return builtins.pow(base, exponent, modulus)


def _round(number: Any, ndigits: Any = None) -> Any:
    if _is_int(ndigits) and abs(ndigits) > 400:
        raise OnDemandLimit("round() to more than 400 digits")
    return builtins.round(number, ndigits)


def _iter(iterable: Iterable[Any]) -> Any:
    """iter() of an iterable only (iter(callable, sentinel) loops in C, out of budget)."""
    return builtins.iter(iterable)


def _sum(iterable: Iterable[Any], start: Any = 0) -> Any:
    if not isinstance(start, int | float | Decimal):
        raise OnDemandLimit("sum() adds numbers; build sequences in a loop")
    return builtins.sum(iterable, start)


class _TextMeta(type):
    """``str`` as on-demand code sees it: ``isinstance(x, str)`` as usual, but calling it
    formats a scalar only."""

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, builtins.str)

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, builtins.str)

    def __call__(cls, value: object = "") -> str:  # type: ignore[override]
        return builtins.str(_scalar(value))


class _Text(metaclass=_TextMeta):
    pass


HELPERS: dict[str, Callable[..., Any]] = {"_lathe_scalar": _scalar, "_lathe_sized": _sized}
"""Other globals the rewritten code calls (f-string parts and results)."""


def names(*groups: str) -> frozenset[str]:
    """Names written as space-separated words (long allow-lists stay readable)."""
    return frozenset(" ".join(groups).split())


_PLAIN_BUILTINS = names(
    "abs all any bool dict divmod enumerate filter float frozenset int isinstance len list",
    "map max min next reversed set sorted tuple zip",
    "KeyError TypeError ValueError ZeroDivisionError",
)
BUILTINS: dict[str, Any] = {
    **{name: getattr(builtins, name) for name in _PLAIN_BUILTINS},
    "iter": _iter,
    "pow": _pow,
    "range": _range,
    "round": _round,
    "str": _Text,
    "sum": _sum,
}
"""Every builtin on-demand code may name."""
EXCEPTIONS = frozenset({"KeyError", "TypeError", "ValueError", "ZeroDivisionError"})
"""The exceptions an ``except`` clause may name."""

MATH_NAMES = names(
    "acos asin atan atan2 ceil copysign cos cosh degrees e erf erfc exp expm1 fabs floor",
    "fmod hypot inf isclose isfinite isinf isnan log log10 log1p log2 nan pi pow radians",
    "sin sinh sqrt tan tanh tau trunc",
)
"""What ``math`` offers (no factorial, comb, perm, prod or isqrt: unbounded in C)."""


def namespace(budget: StepBudget) -> dict[str, Any]:
    """The globals of one compiled function."""
    return {
        "__builtins__": dict(BUILTINS),
        "math": SimpleNamespace(**{name: getattr(math, name) for name in MATH_NAMES}),
        "_lathe_step": budget.step,
        **OPERATORS,
        **HELPERS,
    }
