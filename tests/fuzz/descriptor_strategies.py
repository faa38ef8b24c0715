"""Hypothesis strategies for any protobuf message, built from its descriptor alone.

Every field gets values chosen to break things: boundary numbers (int32/int64/uint64
limits, NaN, infinities, -0.0, denormals), strings a validator has to think about
(empty, whitespace, NUL, 64/65-character names, SQL, paths, foreign page tokens),
unknown enum numbers, empty/duplicated/long repeated fields, map entries, each oneof
member, bounded nesting, and well-known types at and beyond protobuf's own bounds
(a ``Timestamp`` before year 1 or after 9999, nanos negative or >= 1e9).

Random values rarely get past a request's first check, so two kinds of "plausible"
input are mixed in (``Hints``): values by field name harvested from valid requests
and replies (a model that exists, a real page token), and whole valid messages that
are then mutated one to three fields at a time. Nothing here names an RPC or a field
of ours: a new RPC or field is fuzzed as soon as it is in the descriptors.
"""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import duration_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

MAX_DEPTH = 4
"""Nested messages deeper than this are left unset (keeps examples small)."""


def _page_token(cursor: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(cursor).encode()).decode()


BOUNDARY_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\t\n",
    "\x00",
    "a\x00b",
    "a",
    "A",
    "a-",
    "-a",
    "a_",
    "a.b",
    "a:b",
    "a:*",
    "a@2:b",
    "a@x:b",
    ":",
    "*",
    "a" * 47,
    "a" * 48,
    "a" * 49,
    "a" * 63,
    "a" * 64,
    "a" * 65,
    "a" * 257,
    "x" * 5000,
    "Model-Name",
    "name with spaces",
    "user@example.com",
    "'; DROP TABLE events; --",
    '"quoted"',
    "public.x; select 1",
    "pg_catalog.pg_class",
    "information_schema.tables",
    "..",
    "../../etc/passwd",
    "/",
    "a/b",
    "a\\b",
    "é",
    "İ",
    "💥",
    "\u202e",
    "\ufeff",
    "%s%n",
    "{}",
    "[]",
    "null",
    "NaN",
    "true",
    "0",
    "-1",
    "9" * 40,
    "2024-02-30T25:61:00Z",
    "AAAA",
    "!!!not base64!!!",
    _page_token({}),
    _page_token([]),
    _page_token("after"),
    _page_token({"after": None}),
    _page_token({"after": 12}),
    _page_token({"after": {"x": 1}}),
    _page_token({"after": "\x00"}),
    _page_token({"before": "x"}),
    _page_token({"before": -1}),
    _page_token({"before": 1e308}),
    _page_token({"before": 2**70}),
    _page_token({"after": -(2**70)}),
    _page_token({"after": 2**63}),
)

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_SMALL_INTS = (0, 1, -1, 2, 3, 10, 100, 999, 1000, 1001)

# protobuf's Timestamp covers 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_SECONDS: tuple[int, ...] = (
    0,
    -1,
    1,
    1_700_000_000,
    1_800_000_000,
    4_102_444_800,
    253_402_300_799,
    253_402_300_800,
    -62_135_596_800,
    -62_135_596_801,
    2**31,
    -(2**31),
    2**62,
    2**63 - 1,
    -(2**63),
)
NANOS: tuple[int, ...] = (0, 1, 500, 999_999_999, 1_000_000_000, -1, -999_999_999, 2**31 - 1)
# Duration: +-315,576,000,000 s (10,000 years); seconds and nanos must agree in sign.
DURATION_SECONDS: tuple[int, ...] = (
    0,
    1,
    -1,
    59,
    60,
    61,
    3600,
    86_400,
    315_576_000_000,
    315_576_000_001,
    -315_576_000_001,
    2**63 - 1,
    -(2**63),
)
_FLOATS: tuple[float, ...] = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    5e-324,
    2.0**53,
    2.0**63,
)


@dataclass(frozen=True)
class Hints:
    """What the strategies know about the system under test beyond the descriptors."""

    by_field: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    """Plausible scalar values by field name (map keys under ``"<field>[]"``)."""
    by_type: Mapping[str, tuple[Message, ...]] = field(default_factory=dict)
    """Valid messages by full type name, used whole or mutated."""


def _ints(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    edges = [v for v in (*_SMALL_INTS, low, low + 1, high, high - 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _sized_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


SHARP_STRINGS: tuple[str, ...] = ("", "\x00", "a\x00", " ", "A", "a" * 65, "'; --", "é")
"""The few strings that break most validators, drawn more often than the rest."""

FOREIGN_PAGE_TOKENS: tuple[str, ...] = (
    _page_token({"after": "\x00"}),
    _page_token({"before": "x", "after": 2**70}),
    _page_token(["after"]),
)
"""Well-formed tokens (base64 of JSON) this service never issued."""

_OTHER_DIGITS = (
    "٠١٢٣٤٥٦٧٨٩",  # Arabic-Indic: str.isdigit() and int() both take them
    "".join(chr(0xFF10 + d) for d in range(10)),  # fullwidth
    "߀߁߂߃߄߅߆߇߈߉",  # NKo
    "⁰¹²³⁴⁵⁶⁷⁸⁹",  # superscripts: isdigit() takes them, int() does not
)


def cursor_variants(value: str) -> tuple[str, ...]:
    """Edited forms of a ``<number>:<id>`` cursor (a page token as some services write it),
    or none when ``value`` has another shape: the number in other scripts' digits, out of
    int64's and datetime's range, signed or spaced; the id empty, huge, with a NUL, or
    with another separator in it."""
    number, sep, rest = value.partition(":")
    if not sep or not number or not all("0" <= c <= "9" for c in number):
        return ()
    digits = "0123456789"
    return (
        *(f"{number.translate(str.maketrans(digits, other))}:{rest}" for other in _OTHER_DIGITS),
        f"{'9' * 40}:{rest}",
        f"{2**63}:{rest}",
        f"253402300800000000:{rest}",  # microseconds after 9999-12-31
        f"0:{rest}",
        f"-{number}:{rest}",
        f" {number}:{rest}",
        f"{number}_0:{rest}",  # int() takes underscores
        f"{number}:",
        f"{number}:{rest}\x00",
        f"{number}:{'x' * 100_000}",
        f"{number}:{rest}:{rest}",
        f"{number}:\U0010ffff",
        number,
    )


_STRINGS = st.one_of(
    st.sampled_from(SHARP_STRINGS),
    st.sampled_from(BOUNDARY_STRINGS),
    st.from_regex(r"[a-z][a-z0-9_.-]{0,66}", fullmatch=True),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
)
_BYTES = st.one_of(
    st.sampled_from((b"", b"\x00", b"\xff" * 8)),
    st.binary(max_size=64),
    st.builds(_sized_bytes, st.integers(1_000, 70_000), st.integers(0, 2**32)),
)
_DOUBLES = st.one_of(st.sampled_from(_FLOATS), st.floats())
_FLOAT32 = st.one_of(st.sampled_from(_FLOATS[:8]), st.floats(width=32))

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: _STRINGS,
    FieldDescriptor.TYPE_BYTES: _BYTES,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: _DOUBLES,
    FieldDescriptor.TYPE_FLOAT: _FLOAT32,
    FieldDescriptor.TYPE_INT32: _ints(_INT32),
    FieldDescriptor.TYPE_SINT32: _ints(_INT32),
    FieldDescriptor.TYPE_SFIXED32: _ints(_INT32),
    FieldDescriptor.TYPE_INT64: _ints(_INT64),
    FieldDescriptor.TYPE_SINT64: _ints(_INT64),
    FieldDescriptor.TYPE_SFIXED64: _ints(_INT64),
    FieldDescriptor.TYPE_UINT32: _ints(_UINT32),
    FieldDescriptor.TYPE_FIXED32: _ints(_UINT32),
    FieldDescriptor.TYPE_UINT64: _ints(_UINT64),
    FieldDescriptor.TYPE_FIXED64: _ints(_UINT64),
}


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def copy_of(message: Message) -> Message:
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


class MessageStrategies:
    """Builds (and caches) one strategy per message type and depth."""

    def __init__(self, hints: Hints) -> None:
        self._hints = hints
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Random, valid-and-mutated, or valid messages of ``descriptor``'s type."""
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = st.deferred(lambda: self._build(descriptor, depth))
        return self._cache[key]

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        options = [self._random(descriptor, depth)]
        known = self._hints.by_type.get(descriptor.full_name, ())
        if known:
            valid = st.sampled_from(known).map(copy_of)
            options += [valid, self.mutated(valid, depth), self.mutated(valid, depth)]
        return st.one_of(options)

    def mutated(
        self, base: st.SearchStrategy[Message], depth: int = 0
    ) -> st.SearchStrategy[Message]:
        """``base`` (a fresh copy each time) with one to three fields changed."""

        @st.composite
        def _mutated(draw: st.DrawFn) -> Message:
            message = draw(base)
            for _ in range(draw(st.integers(1, 3))):
                self._mutate_once(draw, message, depth)
            return message

        return _mutated()

    # -- whole random messages -------------------------------------------------------

    def _random(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_class(descriptor)
        special = _well_known(descriptor.full_name)
        if special is not None:
            return special
        if depth >= MAX_DEPTH:
            return st.builds(cls)
        plain = [f for f in descriptor.fields if not _in_real_oneof(f)]
        oneofs = [o for o in descriptor.oneofs if not _synthetic(o)]

        @st.composite
        def _message(draw: st.DrawFn) -> Message:
            message = cls()
            for fd in plain:
                if draw(st.booleans()):
                    _assign(message, fd, draw(self.value(fd, depth)))
            for oneof in oneofs:
                chosen = draw(st.none() | st.sampled_from(tuple(oneof.fields)))
                if chosen is not None:
                    _assign(message, chosen, draw(self.value(chosen, depth)))
            return message

        return _message()

    def value(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """A value for field ``fd`` as ``_assign`` takes it (list, dict or scalar)."""
        if is_map(fd):
            key_fd, value_fd = fd.message_type.fields
            keys = self._single(key_fd, depth + 1, plausible_as=f"{fd.name}[]")
            values = self._single(value_fd, depth + 1, plausible_as=fd.name)
            return st.dictionaries(keys, values, max_size=3)
        single = self._single(fd, depth + 1)
        if fd.is_repeated:
            return st.one_of(
                st.lists(single, max_size=4),
                single.map(lambda v: [v, v]),
                st.lists(single, min_size=20, max_size=40),
            )
        return single

    def _single(
        self, fd: FieldDescriptor, depth: int, plausible_as: str | None = None
    ) -> st.SearchStrategy[Any]:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(fd.message_type, depth)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            numbers = [v.number for v in fd.enum_type.values]
            base: st.SearchStrategy[Any] = st.one_of(
                st.sampled_from(numbers),
                st.sampled_from((-1, max(numbers) + 1, 2**31 - 1, -(2**31))),
            )
        else:
            base = _SCALARS[fd.type]
        plausible = [
            v for v in self._hints.by_field.get(plausible_as or fd.name, ()) if _fits(fd, v)
        ]
        if plausible:
            return st.one_of(st.sampled_from(plausible), base)
        return base

    # -- mutation of a valid message --------------------------------------------------

    def _mutate_once(self, draw: st.DrawFn, message: Message, depth: int) -> None:
        fields = tuple(message.DESCRIPTOR.fields)
        if not fields:
            return
        fd = draw(st.sampled_from(fields))
        action = draw(st.sampled_from(("set", "clear", "descend")))
        if action == "clear":
            message.ClearField(fd.name)
        elif action == "descend" and is_map(fd):
            entries = getattr(message, fd.name)
            _, value_fd = fd.message_type.fields
            key_fd = fd.message_type.fields[0]
            key = (
                draw(st.sampled_from(sorted(entries)))
                if entries and draw(st.booleans())
                else draw(self._single(key_fd, depth + 1, plausible_as=f"{fd.name}[]"))
            )
            new = draw(self._single(value_fd, depth + 1, plausible_as=fd.name))
            kept = {k: copy_of(v) if isinstance(v, Message) else v for k, v in entries.items()}
            _assign(message, fd, {**kept, key: new})
        elif action == "descend" and fd.type == FieldDescriptor.TYPE_MESSAGE and depth < MAX_DEPTH:
            if fd.is_repeated:
                items = getattr(message, fd.name)
                if not items:
                    items.add()
                self._mutate_once(draw, items[draw(st.integers(0, len(items) - 1))], depth + 1)
            else:
                self._mutate_once(draw, getattr(message, fd.name), depth + 1)
        elif action == "descend" and fd.is_repeated and len(getattr(message, fd.name)):
            items = list(getattr(message, fd.name))
            index = draw(st.integers(0, len(items) - 1))
            items[index] = draw(self._single(fd, depth + 1))
            _assign(message, fd, items)
        else:
            _assign(message, fd, draw(self.value(fd, depth)))


def _well_known(full_name: str) -> st.SearchStrategy[Message] | None:
    """Timestamp and Duration: drawn at and beyond protobuf's documented bounds."""
    if full_name == "google.protobuf.Timestamp":
        return st.builds(
            timestamp_pb2.Timestamp,
            seconds=st.one_of(st.sampled_from(TIMESTAMP_SECONDS), _ints(_INT64)),
            nanos=st.one_of(st.sampled_from(NANOS), _ints(_INT32)),
        )
    if full_name == "google.protobuf.Duration":
        return st.builds(
            duration_pb2.Duration,
            seconds=st.one_of(st.sampled_from(DURATION_SECONDS), _ints(_INT64)),
            nanos=st.one_of(st.sampled_from(NANOS), _ints(_INT32)),
        )
    return None


def is_map(fd: FieldDescriptor) -> bool:
    return (
        fd.type == FieldDescriptor.TYPE_MESSAGE
        and fd.is_repeated
        and fd.message_type.GetOptions().map_entry
    )


def _synthetic(oneof: Any) -> bool:
    """proto3 ``optional`` fields live in a oneof of their own named ``_<field>``."""
    return len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}"


def _in_real_oneof(fd: FieldDescriptor) -> bool:
    return fd.containing_oneof is not None and not _synthetic(fd.containing_oneof)


_PYTHON_TYPES: dict[int, tuple[type, ...]] = {
    FieldDescriptor.CPPTYPE_STRING: (str, bytes),
    FieldDescriptor.CPPTYPE_BOOL: (bool,),
    FieldDescriptor.CPPTYPE_DOUBLE: (float, int),
    FieldDescriptor.CPPTYPE_FLOAT: (float, int),
    FieldDescriptor.CPPTYPE_INT32: (int,),
    FieldDescriptor.CPPTYPE_INT64: (int,),
    FieldDescriptor.CPPTYPE_UINT32: (int,),
    FieldDescriptor.CPPTYPE_UINT64: (int,),
    FieldDescriptor.CPPTYPE_ENUM: (int,),
}


def _fits(fd: FieldDescriptor, value: object) -> bool:
    """Whether a harvested value can be assigned to ``fd`` (same name, other type)."""
    if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        return isinstance(value, Message) and value.DESCRIPTOR is fd.message_type
    wanted = _PYTHON_TYPES.get(fd.cpp_type, ())
    if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
        return False
    if fd.type == FieldDescriptor.TYPE_STRING:
        return isinstance(value, str)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return isinstance(value, bytes)
    if isinstance(value, int) and not isinstance(value, bool):
        bounds = {
            FieldDescriptor.CPPTYPE_INT32: _INT32,
            FieldDescriptor.CPPTYPE_INT64: _INT64,
            FieldDescriptor.CPPTYPE_UINT32: _UINT32,
            FieldDescriptor.CPPTYPE_UINT64: _UINT64,
            FieldDescriptor.CPPTYPE_ENUM: _INT32,
        }.get(fd.cpp_type)
        return bounds is None or bounds[0] <= value <= bounds[1]
    return True


def _assign(message: Message, fd: FieldDescriptor, value: Any) -> None:
    """Set ``fd`` of ``message`` to ``value``, replacing what was there."""
    message.ClearField(fd.name)
    target = getattr(message, fd.name) if fd.is_repeated else None
    if is_map(fd):
        assert target is not None
        value_fd = fd.message_type.fields[1]
        for key, item in value.items():
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif fd.is_repeated:
        assert target is not None
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, fd.name).CopyFrom(value)
    else:
        setattr(message, fd.name, value)
