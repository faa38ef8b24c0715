"""Responses assembled as protobuf wire bytes instead of message objects.

A GetOnlineFeatures reply for 100 entities x 20 features holds 2,000 values,
statuses and event times. Appending them one by one to Python protobuf messages
costs ~2 µs each (~4 ms per call); joining their encoded bytes and parsing the
reply once in C costs ~0.3 ms. Stored FeatureRows are already encoded Values, so
their bytes are reused as they are. Only the three FeatureVector fields are
written here; tests check the bytes against the protobuf library.

Training sets leave as ~4 MiB ``arrow_ipc`` parts: a message object would copy each
part in and serialize it out again (~0.15 s for a 1M-row set); the wire bytes take one
copy from Arrow's buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

_VALUES = 0x0A  # FeatureVector.values = 1, length-delimited (same tag as FeatureRow.values)
_STATUSES = 0x12  # FeatureVector.statuses = 2, packed varints
_EVENT_TIMES = 0x1A  # FeatureVector.event_times = 3, length-delimited
_RESULTS = 0x12  # GetOnlineFeaturesResponse.results = 2
_ARROW_IPC = 0x12  # GetHistoricalFeaturesResponse.arrow_ipc = 2, length-delimited
NULL_VALUE = b"\x0a\x00"
"""An empty Value (null) as a ``values`` element."""
NO_TIME = b"\x1a\x00"
"""An empty Timestamp as an ``event_times`` element."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UINT64 = (1 << 64) - 1


def varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low = number & 0x7F
        number >>= 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, at
        shift += 7


def value_fields(feature_row: bytes) -> list[bytes]:
    """Each Value of an encoded FeatureRow, as a complete ``values`` field (tag included)."""
    fields, at = [], 0
    while at < len(feature_row):
        if feature_row[at] != _VALUES:
            raise ValueError("not an encoded FeatureRow")
        length, body = _read_varint(feature_row, at + 1)
        fields.append(feature_row[at : body + length])
        at = body + length
    return fields


def value_field(encoded_value: bytes) -> bytes:
    """A serialized Value as a ``values`` field."""
    return bytes([_VALUES]) + varint(len(encoded_value)) + encoded_value


def time_field(encoded_timestamp: bytes) -> bytes:
    return bytes([_EVENT_TIMES]) + varint(len(encoded_timestamp)) + encoded_timestamp


def timestamp_field(moment: datetime) -> bytes:
    """``moment`` as an ``event_times`` element (what Timestamp.FromDatetime encodes).

    Four times cheaper than building the message, which matters once per stored row.
    """
    since = moment - _EPOCH
    seconds = since.days * 86_400 + since.seconds
    nanos = since.microseconds * 1000
    body = b""
    if seconds:
        body = b"\x08" + varint(seconds & _UINT64)  # int64: negatives as 64-bit two's complement
    if nanos:
        body += b"\x10" + varint(nanos)
    return time_field(body)


def statuses_field(status: int, count: int) -> bytes:
    """``count`` copies of one FeatureStatus as a packed ``statuses`` chunk."""
    return b"".join((bytes([_STATUSES]), varint(count), bytes([status]) * count))


def vector_part(values: bytes, status: int, count: int, time: bytes) -> bytes:
    """One view's ``count`` values, statuses and event times as a FeatureVector fragment.

    Protobuf parsers append repeated elements in the order they appear, and a packed
    field may come in several chunks, so a FeatureVector can be written view by view:
    the concatenated fragments parse as the values, statuses and times in order.
    """
    return b"".join((values, statuses_field(status, count), time * count))


def result_header(length: int) -> bytes:
    """The tag and length that make a ``length``-byte FeatureVector a ``results`` entry."""
    if length < 0x80:
        return bytes((_RESULTS, length))
    if length < 0x4000:
        return bytes((_RESULTS, (length & 0x7F) | 0x80, length >> 7))
    return bytes([_RESULTS]) + varint(length)


def result_field(values: Sequence[bytes], statuses: Sequence[int], times: Sequence[bytes]) -> bytes:
    """One ``results`` entry: a FeatureVector from its encoded parts.

    Statuses are FeatureStatus numbers (all below 128, so one byte each when packed).
    """
    packed = bytes(statuses)
    vector = b"".join(
        (b"".join(values), bytes([_STATUSES]), varint(len(packed)), packed, b"".join(times))
    )
    return bytes([_RESULTS]) + varint(len(vector)) + vector


def arrow_ipc_part(chunk: bytes | memoryview) -> bytes:
    """A GetHistoricalFeaturesResponse holding ``chunk`` as its ``arrow_ipc``."""
    return b"".join((bytes([_ARROW_IPC]), varint(len(chunk)), chunk))
