"""A stored online row with the pieces of a GetOnlineFeatures reply already encoded."""

from __future__ import annotations

from datetime import datetime

from lathe.feature_store.v1 import message_pb2 as m
from services.feature_store.app import wire

_PRESENT = m.FEATURE_STATUS_PRESENT


class ServingRow:
    """One view's latest row for one entity.

    Encoding is paid once per stored row (when the replica applies it), so a read
    of a present, whole row only appends ``whole`` to the reply.
    """

    __slots__ = ("event_time", "features", "row", "time", "whole")

    def __init__(self, row: bytes, event_time: datetime, features: int) -> None:
        self.row = row
        """A FeatureRow protobuf: its Values in feature order."""
        self.event_time = event_time
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
