"""Exact moments of a column — count, sum, sum of squares — for STDDEV and VARIANCE.

A tile, a rollup, a lifetime row and a window all keep the same three numbers, exactly:
the sum and the sum of squares are decimals added in a context that never rounds (each
value enters as ``Decimal(repr(float))``, as sums do in aggregation.py), so merging is
commutative and associative *bit for bit* and streamed, backfilled, online and offline
values are identical (ADR 0007's guarantee, ADR 0022).

Why not Welford / Chan et al.: their (count, mean, M2) merge,
``M2 = M2a + M2b + delta^2 * na * nb / n``, is the numerically stable way to merge moments
*in floating point*, but a float merge is not associative, so two groupings of the same
events (a tile batch streamed, the same events backfilled, the raw events offline) would
differ in the last bits. With exact sums the textbook form ``M2 = sum(x^2) - sum(x)^2 / n``
is computed as an exact rational — no cancellation can occur, which is what Chan's
formula protects against — and it equals Chan's merge exactly (it is the same rational).
Only the final division is rounded, once, correctly (``aggregation.exact_ratio``).

Sample statistics (STDDEV, VARIANCE) divide M2 by n - 1 and are null below two values,
as SQL's ``stddev``/``variance``; population ones (STDDEV_POP, VARIANCE_POP) divide by n
and are 0 for one value. A standard deviation is ``sqrt`` of the correctly rounded
variance (IEEE sqrt is correctly rounded, so every path gets the same float; within one
ulp of the exact root).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, Inexact, Overflow

SQUARES = Context(prec=2000, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, Overflow])
"""Squares of doubles span exponents -648..617 with 34 digits each: any sum of them fits
in under 1300 digits. Inexact is trapped, as for sums: a rounded sum must fail loudly."""
_ZERO = Decimal(0)


@dataclass
class Moments:
    """Count, exact sum and exact sum of squares of one column's values."""

    count: int = 0
    total: Decimal = _ZERO
    squares: Decimal = _ZERO

    def add(self, value: Decimal) -> None:
        self.count += 1
        self.total = SQUARES.add(self.total, value)
        self.squares = SQUARES.add(self.squares, SQUARES.multiply(value, value))

    def merge(self, other: Moments) -> None:
        if not other.count:
            return
        self.count += other.count
        self.total = SQUARES.add(self.total, other.total)
        self.squares = SQUARES.add(self.squares, other.squares)

    def encode(self) -> list[object]:
        """``[count, sum, sum of squares]``, the decimals as exact strings."""
        return [self.count, str(self.total), str(self.squares)]

    @classmethod
    def decode(cls, raw: list[object]) -> Moments:
        count, total, squares = raw
        return cls(int(count), Decimal(str(total)), Decimal(str(squares)))  # type: ignore[call-overload]

    def m2(self) -> tuple[int, int]:
        """The sum of squared deviations from the mean, as an exact (numerator, denominator)."""
        return m2_ratio(self.count, self.total.as_integer_ratio(), self.squares.as_integer_ratio())


def m2_ratio(count: int, total: tuple[int, int], squares: tuple[int, int]) -> tuple[int, int]:
    """``sum(x^2) - sum(x)^2 / n`` for exact ratios of the sum and the sum of squares."""
    (a, b), (c, d) = total, squares
    # c/d - a^2 / (b^2 n) = (c b^2 n - a^2 d) / (d b^2 n)
    return c * b * b * count - a * a * d, d * b * b * count


def variance_ratio(count: int, m2: tuple[int, int], *, sample: bool) -> tuple[int, int] | None:
    """The variance as an exact ratio; None where it is undefined (no value; one value for
    a sample variance)."""
    divisor = count - 1 if sample else count
    if divisor <= 0:
        return None
    numerator, denominator = m2
    return numerator, denominator * divisor


def spread(variance: float | None, *, root: bool) -> float | None:
    """The variance, or its square root (a standard deviation)."""
    if variance is None or not root:
        return variance
    return math.sqrt(variance)
