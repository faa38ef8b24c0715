"""Sequence partials for FIRST, LAST_N and FIRST_N: the n latest (or earliest) events.

A part keeps, of the events merged into it, the n with the greatest (LAST_N) or least
(FIRST / FIRST_N) order key — (event time µs, arrival time µs, stream sequence), a total
order, so no tie depends on arrival — each with its values of the aggregated columns.
The n latest of a union are the n latest of the parts' n latest, so merging is
commutative and associative, and the kept set is a function of the multiset of events:
streamed, backfilled, rolled-up, online and offline values are identical (ADR 0007's
guarantee; ADR 0021). Values are JSON scalars of the column's type (int, float, str,
bool), stored as they are.

A window's value is the kept events in ascending order: OLDEST FIRST, the newest last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Item = list[object]
"""``[event µs, arrival µs, stream sequence, *values]``: the order key, then the event's
values of the part's columns — the stored form itself, so decoding allocates nothing per
item. Lists compare element by element and no two events share an order key, so plain
``sorted`` orders items by their order key."""
ORDER_KEY = 3
"""Values start at this index of an item."""

LATEST, EARLIEST = "sl", "sf"
"""Part kinds: the n latest events (LAST_N), the n earliest (FIRST, FIRST_N)."""


def sequence_key(latest: bool, n: int, columns: tuple[str, ...], types: tuple[int, ...]) -> str:
    """``"sl:<n>:<type>,<type>:<col>,<col>"``: aggregations over the same columns (of the
    same types), direction and n share one part."""
    kinds = ",".join(str(t) for t in types)
    return f"{LATEST if latest else EARLIEST}:{n}:{kinds}:{','.join(columns)}"


def parse_key(key: str) -> tuple[bool, int, tuple[str, ...]]:
    """(latest, n, columns) of a sequence part's key."""
    kind, n, _, columns = key.split(":", 3)
    return kind == LATEST, int(n), tuple(columns.split(","))


@dataclass
class EventSequence:
    """The n latest (``latest``) or earliest events merged in, with their values."""

    latest: bool
    n: int
    items: list[Item] = field(default_factory=list)
    """Unordered and possibly more than n until ``kept`` trims them (merges only collect)."""

    @classmethod
    def of_key(cls, key: str) -> EventSequence:
        latest, n, _ = parse_key(key)
        return cls(latest, n)

    def add(self, event: tuple[tuple[int, int, int], tuple[object, ...]]) -> None:
        """One event's (order key, values), as parsing gives it."""
        self.items.append([*event[0], *event[1]])
        if len(self.items) > 4 * self.n + 16:
            self.items = self.kept()

    def merge(self, other: EventSequence) -> None:
        self.items.extend(other.items)
        if len(self.items) > 4 * self.n + 16:
            self.items = self.kept()

    def kept(self) -> list[Item]:
        """The n events kept, in ascending order key (oldest first)."""
        ordered = sorted(self.items)  # type: ignore[type-var]
        return ordered[-self.n :] if self.latest else ordered[: self.n]

    def encode(self) -> list[Item]:
        """``[[event µs, arrival µs, sequence, *values], ...]`` ascending: canonical."""
        self.items = self.kept()
        return self.items

    @classmethod
    def decode(cls, key: str, raw: list[Item]) -> EventSequence:
        latest, n, _ = parse_key(key)
        return cls(latest, n, raw)
