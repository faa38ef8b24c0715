"""Pre-serialized replies pass the kit's serializer untouched; messages still serialize."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from libs.grpckit import Encoded
from libs.grpckit.encoded import allowing_encoded


def test_encoded_replies_pass_through_and_messages_serialize() -> None:
    serialize = allowing_encoded(Timestamp.SerializeToString)
    assert serialize is not None
    stamp = Timestamp(seconds=5, nanos=7)
    assert serialize(stamp) == stamp.SerializeToString()
    assert serialize(Encoded(b"\x08\x05")) == b"\x08\x05"
    assert Timestamp.FromString(serialize(Encoded(stamp.SerializeToString()))) == stamp
    assert allowing_encoded(None) is None
