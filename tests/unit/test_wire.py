"""Hand-assembled online replies equal what the protobuf library builds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from lathe.feature_store.v1 import message_pb2 as m
from lathe.feature_store.v1 import request_response_pb2 as rr
from services.feature_store.domain.serving import wire


def _random_value(rng: random.Random) -> m.Value:
    kind = rng.choice(["null", "bool", "int", "float", "str", "time"])
    if kind == "null":
        return m.Value()
    if kind == "bool":
        return m.Value(bool_value=rng.random() < 0.5)
    if kind == "int":
        return m.Value(int64_value=rng.randint(-(2**62), 2**62))
    if kind == "float":
        return m.Value(float64_value=rng.uniform(-1e9, 1e9))
    if kind == "str":
        return m.Value(string_value="x" * rng.randint(0, 300))
    value = m.Value()
    value.timestamp_value.FromSeconds(rng.randint(0, 2**33))
    return value


def test_reply_bytes_match_the_library() -> None:
    rng = random.Random(9)
    expected = rr.GetOnlineFeaturesResponse(feature_names=["a:b"])
    parts = []
    for _ in range(50):
        values = [_random_value(rng) for _ in range(rng.randint(0, 40))]
        statuses = [rng.choice([1, 2, 3]) for _ in values]
        stamps = []
        for _ in values:
            stamp = Timestamp()
            if rng.random() < 0.7:
                stamp.FromSeconds(rng.randint(0, 2**33))
            stamps.append(stamp)
        expected.results.add(values=values, statuses=statuses, event_times=stamps)
        row = m.FeatureRow(values=values).SerializeToString()
        assert wire.value_fields(row) == [wire.value_field(v.SerializeToString()) for v in values]
        parts.append(
            wire.result_field(
                wire.value_fields(row),
                statuses,
                [wire.time_field(s.SerializeToString()) for s in stamps],
            )
        )
    built = rr.GetOnlineFeaturesResponse(feature_names=["a:b"])
    built.MergeFromString(b"".join(parts))
    assert built == expected
    assert wire.value_field(m.Value().SerializeToString()) == wire.NULL_VALUE
    assert wire.time_field(Timestamp().SerializeToString()) == wire.NO_TIME


def test_timestamp_fields_match_the_library() -> None:
    rng = random.Random(3)
    moments = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # negative seconds
        datetime(1900, 3, 1, 12, tzinfo=UTC),
        datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC),  # whole seconds: no nanos field
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        *(
            datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 2**56))
            for _ in range(200)
        ),
    ]
    for moment in moments:
        stamp = Timestamp()
        stamp.FromDatetime(moment)
        assert wire.timestamp_field(moment) == wire.time_field(stamp.SerializeToString()), moment


def test_vectors_written_view_by_view_parse_in_order() -> None:
    """Fragments interleave values, packed statuses and times; parsers keep the order."""
    rng = random.Random(4)
    expected = rr.FeatureVector()
    parts = []
    for _ in range(6):
        count = rng.randint(0, 5)
        values = [_random_value(rng) for _ in range(count)]
        status = rng.choice([1, 2, 3])
        stamp = Timestamp()
        stamp.FromSeconds(rng.randint(0, 2**33))
        expected.values.extend(values)
        expected.statuses.extend([status] * count)
        expected.event_times.extend([stamp] * count)
        parts.append(
            wire.vector_part(
                m.FeatureRow(values=values).SerializeToString(),
                status,
                count,
                wire.time_field(stamp.SerializeToString()),
            )
        )
    vector = b"".join(parts)
    reply = rr.GetOnlineFeaturesResponse()
    reply.MergeFromString(wire.result_header(len(vector)) + vector)
    assert list(reply.results) == [expected]


def test_result_headers_of_every_length_class() -> None:
    for length in (0, 1, 127, 128, 300, 16_383, 16_384, 3_000_000):
        vector = rr.FeatureVector(statuses=[1] * length)
        body = vector.SerializeToString()
        reply = rr.GetOnlineFeaturesResponse()
        reply.MergeFromString(wire.result_header(len(body)) + body)
        assert list(reply.results) == [vector], length


def test_arrow_ipc_parts_match_the_library() -> None:
    for size in (0, 1, 127, 128, 16_383, 16_384, 4 * 1024 * 1024 - 64 * 1024):
        chunk = bytes(random.Random(size).getrandbits(8) for _ in range(min(size, 256))) * (
            size // 256 + 1
        )
        chunk = chunk[:size]
        part = wire.arrow_ipc_part(memoryview(chunk))
        assert part == rr.GetHistoricalFeaturesResponse(arrow_ipc=chunk).SerializeToString()
        assert rr.GetHistoricalFeaturesResponse.FromString(part).arrow_ipc == chunk
