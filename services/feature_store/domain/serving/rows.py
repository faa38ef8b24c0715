"""Stored online rows with the pieces of a GetOnlineFeatures reply already encoded.

An entity's rows of one view form a short *chain* in event-time order: the latest row
already true, then the rows of the future, each true from its event time on (ADR 0019).
A read at ``now`` answers the last row of the chain whose event time has come, or none
(NOT_FOUND) when every row is still ahead; the moment the next row becomes true ends an
answer like an expiry does. Almost every entity's chain is one row whose time has come,
and reading it costs one comparison more than a single row did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.serving import wire
from services.feature_store.domain.times import to_us, utc

_PRESENT = m.FEATURE_STATUS_PRESENT
_NOT_FOUND = m.FEATURE_STATUS_NOT_FOUND
_EXPIRED = m.FEATURE_STATUS_EXPIRED
_MICROSECOND = timedelta(microseconds=1)
FOREVER_US = 1 << 62
"""A validity that never ends (microseconds since the epoch)."""


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch: exact, as datetime arithmetic is."""
    return to_us(moment)


class ServingRow:
    """One view's row for one entity, the head of its chain (see the module docstring).

    Encoding is paid once per stored row (when the replica applies it), so a read
    of a present, whole row only appends ``whole`` to the reply.
    """

    __slots__ = (
        "created_us",
        "event_time",
        "event_us",
        "features",
        "later",
        "next_us",
        "row",
        "time",
        "whole",
    )

    def __init__(
        self,
        row: bytes,
        event_time: datetime,
        features: int,
        created_time: datetime | None = None,
    ) -> None:
        self.row = row
        """A FeatureRow protobuf: its Values in feature order."""
        self.event_time = event_time = utc(event_time)
        self.event_us = epoch_us(event_time)
        self.created_us = self.event_us if created_time is None else epoch_us(created_time)
        """When the row became known: breaks ties between rows of one event time."""
        self.features = features or len(wire.value_fields(row))
        """How many values ``row`` holds."""
        self.time = wire.timestamp_field(event_time)
        """The event time as an encoded ``event_times`` element."""
        self.whole = wire.vector_part(row, _PRESENT, self.features, self.time)
        """Every value PRESENT, as a FeatureVector fragment."""
        self.later: ServingRow | None = None
        """The next row of the chain (a later event time), or None."""
        self.next_us = FOREVER_US
        """``later``'s event time: when this row stops being the answer."""

    def fields(self) -> list[bytes]:
        """Each value as an encoded ``values`` element."""
        return wire.value_fields(self.row)

    def at(self, now_us: int) -> ServingRow | None:
        """The chain's row true at ``now_us``: the last whose event time has come."""
        if self.event_us > now_us:
            return None
        row = self
        while row.next_us <= now_us:
            row = row.later  # type: ignore[assignment]  # next_us < FOREVER: later is set
        return row


def _newer(a: ServingRow, b: ServingRow) -> bool:
    """Whether ``b`` wins over ``a``: a later event time, then a later created time;
    on a full tie the row applied last (a changed value of the same row) wins."""
    return (b.event_us, b.created_us) >= (a.event_us, a.created_us)


def merged(head: ServingRow | None, row: ServingRow, now_us: int) -> ServingRow:
    """The chain ``head`` with ``row`` added, as of ``now_us``: the latest row already
    true (rows it supersedes can never be the answer again), then every row of the
    future, one per event time (the latest known), in event-time order. Returns the new
    head; rows of ``head`` are relinked in place (reads never hold a chain across an
    await)."""
    if head is None:
        return row
    if head.later is None and head.event_us <= now_us and row.event_us <= now_us:
        return row if _newer(head, row) else head  # the usual case: no row of the future
    rows = [row]
    node: ServingRow | None = head
    while node is not None:
        rows.append(node)
        node = node.later
    current: ServingRow | None = None
    ahead: dict[int, ServingRow] = {}
    for candidate in reversed(rows):  # ``row`` last: it wins full ties
        if candidate.event_us <= now_us:
            if current is None or _newer(current, candidate):
                current = candidate
        else:
            kept = ahead.get(candidate.event_us)
            if kept is None or _newer(kept, candidate):
                ahead[candidate.event_us] = candidate
    chain = ([current] if current is not None else []) + [ahead[t] for t in sorted(ahead)]
    for earlier, later in pairwise(chain):
        earlier.later, earlier.next_us = later, later.event_us
    chain[-1].later, chain[-1].next_us = None, FOREVER_US
    return chain[0]


ViewTables = dict[tuple[str, int], dict[str, ServingRow]]
"""Rows by (view, version), then by entity key."""


@dataclass(frozen=True)
class StoredView:
    """One stored view version as replies read it: its rows become reply fragments.

    ``expired`` is the one TTL rule of online reads, and ``part`` the one encoding of
    a whole view's row (present, not found, expired), whether a reply is assembled
    view by view or kept ready per entity (app/online/vectors.py).
    """

    key: tuple[str, int]
    features: int
    """The view's feature count now (rows stored before features were appended hold fewer)."""
    ttl_us: int | None
    """None: values never expire."""
    absent: bytes = field(init=False)
    """The fragment of an entity with no row."""
    expired_values: bytes = field(init=False)
    """An expired row's fragment, without its event times."""

    def __post_init__(self) -> None:
        n = self.features
        object.__setattr__(
            self, "absent", wire.vector_part(wire.NULL_VALUE * n, _NOT_FOUND, n, wire.NO_TIME)
        )
        object.__setattr__(
            self, "expired_values", wire.NULL_VALUE * n + wire.statuses_field(_EXPIRED, n)
        )

    @classmethod
    def of(cls, key: tuple[str, int], features: int, ttl_s: float) -> StoredView:
        # timedelta rounds the TTL to microseconds exactly as the cutoff ``now - ttl`` does
        # (a TTL under half a microsecond becomes 0: values expire once they are past).
        ttl_us = timedelta(seconds=ttl_s) // _MICROSECOND if ttl_s else None
        return cls(key, features, ttl_us)

    def expired(self, found: ServingRow, now_us: int) -> bool:
        """Past the TTL: the event time is before ``now - ttl``."""
        return self.ttl_us is not None and found.event_us + self.ttl_us < now_us

    def part(self, found: ServingRow | None, now_us: int) -> tuple[bytes, int]:
        """The fragment of the chain ``found`` read at ``now_us``, and the last moment it
        stays so (its value expires, or the chain's next row becomes true)."""
        if found is None:
            return self.absent, FOREVER_US
        if not found.event_us <= now_us < found.next_us:  # a chain with rows of the future
            head, found = found, found.at(now_us)
            if found is None:
                return self.absent, head.event_us - 1  # NOT_FOUND until the first is true
        until = found.next_us - 1
        if self.expired(found, now_us):
            return self.expired_values + found.time * self.features, until
        if self.ttl_us is not None and found.event_us + self.ttl_us < until:
            until = found.event_us + self.ttl_us
        if found.features == self.features:
            return found.whole, until
        return self._partial(found), until

    def _partial(self, found: ServingRow) -> bytes:
        """A row stored before features were appended: the missing ones NOT_FOUND."""
        fields = found.fields()[: self.features]
        missing = self.features - len(fields)
        return b"".join(
            (
                wire.vector_part(b"".join(fields), _PRESENT, len(fields), found.time),
                wire.vector_part(wire.NULL_VALUE * missing, _NOT_FOUND, missing, found.time),
            )
        )
