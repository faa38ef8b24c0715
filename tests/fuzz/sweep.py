"""A systematic pass: every field of every valid request, set to each boundary value in turn.

Random generation finds combinations; it seldom puts a NUL in one particular field of
one particular request while keeping the rest valid. This pass does exactly that: for
each valid request of the corpus, for each field in it (nested ones, list elements
and map entries included, and fields the request leaves unset), it sends a copy with
only that field changed to a boundary value (NUL, empty, 65 characters, NaN, int64
limits, a ``Timestamp`` past year 9999, an unknown enum number, an empty or
duplicated list...). For RPCs that change state each change goes twice: as it is, and
with every other string "freshened" (a suffix appended) so that creates do not stop at
ALREADY_EXISTS before the changed field is even looked at.

Lists of messages also get changes of their own shape: grown to ``LONG_LISTS`` items
(their own items repeated: a common cap, and one past it), grown with a map key of its
own in every item (a name per row: as many distinct names as items), and every item's
string set to the first item's (ids that should differ, the same).

The unchanged requests go first (a valid request must pass the oracle too). Large
requests have more (field, value) pairs than a CI run can afford; then each field of
each message type gets each value once (at its first place) before the rest of the
budget goes to a fixed random sample of the others.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tests.fuzz.descriptor_strategies import (
    FOREIGN_PAGE_TOKENS,
    SHARP_STRINGS,
    copy_of,
    cursor_variants,
    is_map,
    message_class,
)

Step = tuple[str, int | str | None]
"""A field name and, inside a list or map, the element's index or key."""

_INT_LIMITS = {
    FieldDescriptor.CPPTYPE_INT32: (0, -1, -(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (0, -1, -(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_DOUBLES = (math.nan, math.inf, -math.inf, -0.0, 1e308)
_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 3e38)
_BYTES = (b"", b"\x00", b"\xff\xfe", random.Random(7).randbytes(2048))
_TIMESTAMPS = (
    timestamp_pb2.Timestamp(seconds=253_402_300_800),
    timestamp_pb2.Timestamp(seconds=-62_135_596_801),
    timestamp_pb2.Timestamp(seconds=2**62),
    timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=-1),
    timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=1_000_000_000),
    timestamp_pb2.Timestamp(seconds=4_102_444_800),  # 2100: valid, but far in the future
)
_DURATIONS = (
    duration_pb2.Duration(seconds=315_576_000_001),
    duration_pb2.Duration(seconds=-1),
    duration_pb2.Duration(seconds=1, nanos=-1),
    duration_pb2.Duration(nanos=1_000_000_000),
    duration_pb2.Duration(seconds=2**62),
    duration_pb2.Duration(nanos=1),
)
_LEAF_MESSAGES = {
    "google.protobuf.Timestamp": _TIMESTAMPS,
    "google.protobuf.Duration": _DURATIONS,
}
LONG_LISTS = (1_024, 1_025)
"""Lengths a list of messages is grown to: a common cap, and one past it."""
_UNSET_DEPTH = 2
"""Fields a request leaves unset are swept only this deep (their sub-fields multiply)."""


@dataclass(frozen=True)
class Change:
    """One field of one message set to one value (``value`` None: cleared or emptied)."""

    path: tuple[Step, ...]
    value: Any
    how: str
    """"set", "clear", "empty", "duplicate" or "new-key"; for a list of messages also
    "grow" (``value``: the length), "distinct-keys" (``value``: the items' map field)
    and "same" (``value``: the items' string field)."""
    owner: str = ""
    """Full name of the message type holding the field (groups alike changes)."""

    @property
    def group(self) -> tuple[str, str, str, str]:
        """Alike changes: the same field of the same message type, to the same value."""
        return (self.owner, self.path[-1][0], self.how, repr(self.value)[:40])


def _boundary_values(fd: FieldDescriptor, current: Any) -> Sequence[Any]:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _LEAF_MESSAGES.get(fd.message_type.full_name, ())
    if fd.type == FieldDescriptor.TYPE_STRING:
        shaped = cursor_variants(current) if isinstance(current, str) else ()
        return (*SHARP_STRINGS, *FOREIGN_PAGE_TOKENS, *shaped)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return (not current,)
    if fd.type == FieldDescriptor.TYPE_DOUBLE:
        return _DOUBLES
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return _FLOATS
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return (0, -1, max(v.number for v in fd.enum_type.values) + 1)
    return _INT_LIMITS[fd.cpp_type]


def _is_leaf_message(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.full_name in _LEAF_MESSAGES


def changes(message: Message, prefix: tuple[Step, ...] = (), depth: int = 0) -> Iterator[Change]:
    """Every single-field change of ``message`` worth sending."""
    owner = message.DESCRIPTOR.full_name
    for change in _changes(message, prefix, depth):
        yield change if change.owner else replace(change, owner=owner)


def _changes(message: Message, prefix: tuple[Step, ...], depth: int) -> Iterator[Change]:
    for fd in message.DESCRIPTOR.fields:
        here = (*prefix, (fd.name, None))
        if is_map(fd):
            entries = getattr(message, fd.name)
            value_fd = fd.message_type.fields[1]
            if entries:
                yield Change(here, None, "empty")
            for key in list(entries)[:2]:
                step = (*prefix, (fd.name, key))
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    yield from changes(entries[key], step, depth + 1)
                else:
                    for value in _boundary_values(value_fd, entries[key]):
                        yield Change(step, value, "set")
            key_fd = fd.message_type.fields[0]
            for key in _boundary_values(key_fd, None):
                yield Change((*prefix, (fd.name, key)), None, "new-key")
        elif fd.is_repeated:
            items = getattr(message, fd.name)
            if items:
                yield Change(here, None, "empty")
                yield Change(here, None, "duplicate")
            if fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_leaf_message(fd):
                if items:
                    yield from _list_changes(fd, items, here)
                for index in range(min(len(items), 3)):
                    yield from changes(items[index], (*prefix, (fd.name, index)), depth + 1)
                if not items and depth < _UNSET_DEPTH:
                    empty = message_class(fd.message_type)()
                    yield from changes(empty, (*prefix, (fd.name, 0)), depth + 1)
            else:
                for index in range(min(len(items), 2)) if items else [0]:
                    for value in _boundary_values(fd, None):
                        yield Change((*prefix, (fd.name, index)), value, "set")
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not _is_leaf_message(fd):
            present = message.HasField(fd.name)
            if present:
                yield Change(here, None, "clear")
            if present or depth < _UNSET_DEPTH:
                yield from changes(getattr(message, fd.name), here, depth + 1)
        else:
            for value in _boundary_values(fd, getattr(message, fd.name)):
                yield Change(here, value, "set")


def _list_changes(
    fd: FieldDescriptor, items: Sequence[Message], here: tuple[Step, ...]
) -> Iterator[Change]:
    """Changes of a whole list of messages: longer, a key per item, a value for all."""
    for length in LONG_LISTS:
        if len(items) < length:
            yield Change(here, length, "grow")
    for sub in fd.message_type.fields:
        keyed = is_map(sub) and sub.message_type.fields[0].type == FieldDescriptor.TYPE_STRING
        if keyed and any(len(getattr(item, sub.name)) for item in items):
            yield Change(here, sub.name, "distinct-keys")
        text = sub.type == FieldDescriptor.TYPE_STRING and not sub.is_repeated
        if text and len(items) > 1 and getattr(items[0], sub.name):
            yield Change(here, sub.name, "same")


def _grow(items: Any, length: int) -> None:
    """Repeat the list's own items, in order, until it holds ``length``. A string field
    whose values all differ (an id) stays distinct: copies get a suffix."""
    existing = len(items)
    ids = [
        sub.name
        for sub in items[0].DESCRIPTOR.fields
        if sub.type == FieldDescriptor.TYPE_STRING
        and not sub.is_repeated
        and existing > 1
        and all(getattr(item, sub.name) for item in items)
        and len({getattr(item, sub.name) for item in items}) == existing
    ]
    for index in range(existing, length):
        copy = items.add()
        copy.CopyFrom(items[index % existing])
        for name in ids:
            setattr(copy, name, f"{getattr(copy, name)}~{index // existing}")


def _distinct_keys(items: Any, map_name: str) -> None:
    """Grow the list to the first of ``LONG_LISTS``, then give each item a key of its own
    in its ``map_name`` map (holding the value of the first item's first entry)."""
    _grow(items, LONG_LISTS[0])
    entries = next(getattr(item, map_name) for item in items if len(getattr(item, map_name)))
    key = next(iter(entries))
    for index, item in enumerate(items):
        target = getattr(item, map_name)
        if isinstance(entries[key], Message):
            target[f"{key}_{index}"].CopyFrom(entries[key])
        else:
            target[f"{key}_{index}"] = entries[key]


def apply(message: Message, change: Change) -> Message:
    """A copy of ``message`` with ``change`` made."""
    changed = copy_of(message)
    parent: Message = changed
    for name, at in change.path[:-1]:
        field = getattr(parent, name)
        if at is None:
            parent = field
        elif isinstance(at, int):
            while len(field) <= at:
                field.add()
            parent = field[at]
        else:
            parent = field[at]
    name, at = change.path[-1]
    fd = parent.DESCRIPTOR.fields_by_name[name]
    field = getattr(parent, name) if fd.is_repeated else None
    if change.how in ("clear", "empty"):
        parent.ClearField(name)
    elif change.how == "grow":
        _grow(field, change.value)
    elif change.how == "distinct-keys":
        _distinct_keys(field, change.value)
    elif change.how == "same":
        assert field is not None
        for item in field[1:]:
            setattr(item, change.value, getattr(field[0], change.value))
    elif change.how == "duplicate":
        assert field is not None
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            field.add().CopyFrom(field[0])
        else:
            field.append(field[0])
    elif change.how == "new-key":
        assert field is not None
        value_fd = fd.message_type.fields[1]
        if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
            field[at].SetInParent()
        else:
            field[at] = field[next(iter(field))] if len(field) else value_fd.default_value
    elif is_map(fd):
        assert field is not None
        field[at] = change.value
    elif fd.is_repeated:
        assert field is not None and isinstance(at, int)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            while len(field) <= at:
                field.add()
            field[at].CopyFrom(change.value)
        else:
            values = list(field)
            while len(values) <= at:
                values.append(change.value)
            values[at] = change.value
            parent.ClearField(name)
            field.extend(values)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(parent, name).CopyFrom(change.value)
    else:
        setattr(parent, name, change.value)
    return changed


def freshened(message: Message, suffix: str) -> Message:
    """A copy with ``suffix`` appended to every non-empty string (a new name for creates)."""
    fresh = copy_of(message)
    _freshen(fresh, suffix)
    return fresh


def _freshen(message: Message, suffix: str) -> None:
    for fd, value in message.ListFields():
        if is_map(fd):
            value_fd = fd.message_type.fields[1]
            for key in list(value):
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    _freshen(value[key], suffix)
                elif value_fd.type == FieldDescriptor.TYPE_STRING and value[key]:
                    value[key] += suffix
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if fd.is_repeated else [value]:
                _freshen(item, suffix)
        elif fd.type == FieldDescriptor.TYPE_STRING:
            if fd.is_repeated:
                items = [v + suffix if v else v for v in value]
                message.ClearField(fd.name)
                getattr(message, fd.name).extend(items)
            elif value:
                setattr(message, fd.name, value + suffix)


def sweep(
    sequences: Sequence[tuple[Message, ...]], budget: int, *, streaming: bool, fresh: bool
) -> list[tuple[Message, ...]]:
    """The requests as they are, then copies with one field changed (at most ``budget``).

    ``fresh``: also send each change with the other strings freshened (for RPCs that
    create things). Within the budget, every group of alike changes (``Change.group``)
    goes once before any goes twice, so each field of each message type meets each
    boundary value even when the request is too large to sweep whole.
    """
    firsts: list[tuple[Message, ...]] = []
    fresh_firsts: list[tuple[Message, ...]] = []
    rest: list[tuple[Message, ...]] = []
    seen: set[tuple[str, ...]] = set()
    for sequence in sequences:
        for position, message in enumerate(sequence if streaming else sequence[:1]):
            for change in changes(message):
                first = change.group not in seen
                seen.add(change.group)
                edited = list(sequence)
                edited[position] = apply(message, change)
                (firsts if first else rest).append(tuple(edited))
                if fresh:
                    suffix = f"z{len(firsts) + len(fresh_firsts) + len(rest):x}"
                    renamed = [freshened(m, suffix) for m in sequence]
                    renamed[position] = apply(renamed[position], change)
                    (fresh_firsts if first else rest).append(tuple(renamed))
    random.Random(len(rest)).shuffle(rest)
    return [*sequences, *(firsts + fresh_firsts + rest)[:budget]]
