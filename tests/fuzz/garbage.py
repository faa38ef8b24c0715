"""Request bodies that are not a valid message, or barely are.

Sent as raw bytes instead of an encoded request: a service must answer them with
INVALID_ARGUMENT, never with UNKNOWN or INTERNAL.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


def garbage_bytes(valid: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """Request bodies that are not a valid encoding of any message (or barely are).

    Invalid tags and wire types, truncated varints and lengths, lengths past the end,
    invalid UTF-8 in the first string-shaped field, deep group nesting, random bytes,
    and valid encodings cut short or with a byte flipped.
    """
    crafted = st.sampled_from(
        (
            b"\x00",
            b"\xff",
            b"\xff" * 16,
            b"\x08",  # field 1 varint, value missing
            b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint longer than 10 bytes
            b"\x0a\x05ab",  # length past the end
            b"\x0a\xff\xff\xff\xff\x0f",  # huge length
            b"\x0a\x02\xc3\x28",  # field 1 as invalid UTF-8
            b"\x0a\x01\x80",
            b"\x0a\x03a\x00b",
            b"\x12\x02\xed\xa0",  # field 2, an encoded surrogate
            b"\x0b" * 200,  # start-group 1, never ended, nested deep
            b"\x0b\x0c",  # empty group in proto3
            b"\x0c",  # end-group without a start
            b"\x0f",  # wire type 7
            b"\x0e\x01",  # wire type 6
            b"\x00\x01",  # field number 0
            b"\xf8\xff\xff\xff\x0f\x01",  # field number 2^29-1
            b"\x09\x01\x02",  # fixed64 cut short
            b"\x0d\x01",  # fixed32 cut short
            b"\x10\x01\x10",  # repeated varint field then cut
        )
    )
    options: list[st.SearchStrategy[bytes]] = [crafted, st.binary(min_size=1, max_size=200)]
    if valid:
        encodings = st.sampled_from([v for v in valid if v])
        options += [
            encodings.flatmap(lambda b: st.integers(1, max(1, len(b) - 1)).map(lambda n: b[:n])),
            encodings.flatmap(
                lambda b: st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)).map(
                    lambda at: b[: at[0]] + bytes([at[1]]) + b[at[0] + 1 :]
                )
            ),
            encodings.map(lambda b: b + b"\x0a\x02\xc3\x28"),
        ]
    return st.one_of(options)
