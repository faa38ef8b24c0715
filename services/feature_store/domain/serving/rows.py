"""Stored online rows with the pieces of a GetOnlineFeatures reply already encoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.domain.serving import wire

_PRESENT = m.FEATURE_STATUS_PRESENT
_NOT_FOUND = m.FEATURE_STATUS_NOT_FOUND
_EXPIRED = m.FEATURE_STATUS_EXPIRED
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
FOREVER_US = 1 << 62
"""A validity that never ends (microseconds since the epoch)."""


def epoch_us(moment: datetime) -> int:
    """Microseconds since the epoch: exact, as datetime arithmetic is."""
    return (moment - _EPOCH) // _MICROSECOND


class ServingRow:
    """One view's latest row for one entity.

    Encoding is paid once per stored row (when the replica applies it), so a read
    of a present, whole row only appends ``whole`` to the reply.
    """

    __slots__ = ("event_time", "event_us", "features", "row", "time", "whole")

    def __init__(self, row: bytes, event_time: datetime, features: int) -> None:
        self.row = row
        """A FeatureRow protobuf: its Values in feature order."""
        self.event_time = event_time
        self.event_us = epoch_us(event_time)
        self.features = features or len(wire.value_fields(row))
        """How many values ``row`` holds."""
        self.time = wire.timestamp_field(event_time)
        """The event time as an encoded ``event_times`` element."""
        self.whole = wire.vector_part(row, _PRESENT, self.features, self.time)
        """Every value PRESENT, as a FeatureVector fragment."""

    def fields(self) -> list[bytes]:
        """Each value as an encoded ``values`` element."""
        return wire.value_fields(self.row)


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
        """The fragment of ``found`` read at ``now_us``, and the last moment it stays so."""
        if found is None:
            return self.absent, FOREVER_US
        if self.expired(found, now_us):
            return self.expired_values + found.time * self.features, FOREVER_US
        expires = FOREVER_US if self.ttl_us is None else found.event_us + self.ttl_us
        if found.features == self.features:
            return found.whole, expires
        return self._partial(found), expires

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
