"""Instants as the feature store holds them: UTC-aware, microseconds, year 1 to 9999.

Every time that enters or leaves Postgres, DuckDB or Arrow goes through here. The range
is protobuf's ``Timestamp`` at microsecond precision, and both ends are valid event
times. asyncpg's codec turns exactly those two instants into Postgres ``-infinity`` and
``infinity`` when it encodes them, and decodes ``±infinity`` as *naive*
``datetime.min``/``datetime.max`` (so a pushed row at 0001-01-01 came back naive and
broke every computation with it). Storing them as ``±infinity`` is harmless — they are
still the least and greatest instants, in the same order — as long as every read gives
them back as the aware instants they were: ``utc`` does, and SQL that hands times to
DuckDB or CSV clamps them to the finite ends first (``store/times.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

MIN_TIME = datetime(1, 1, 1, tzinfo=UTC)
"""The first instant a protobuf Timestamp holds (what asyncpg stores as -infinity)."""
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
"""The last instant at microsecond precision (what asyncpg stores as infinity)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NAIVE_MIN = datetime.min
_NAIVE_MAX = datetime.max


def utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime: asyncpg's naive ``±infinity`` become the
    first and last instants, any other naive value is read as UTC wall-clock time."""
    if moment.tzinfo is UTC:
        return moment
    if moment.tzinfo is None:
        if moment == _NAIVE_MIN:
            return MIN_TIME
        if moment == _NAIVE_MAX:
            return MAX_TIME
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware (or asyncpg-infinite) ``moment``: exact."""
    return (utc(moment) - _EPOCH) // _MICROSECOND


def from_us(microseconds: int) -> datetime:
    """The aware UTC instant ``microseconds`` after the epoch."""
    return _EPOCH + timedelta(microseconds=microseconds)
