"""Checks every request message gets at decode time, compiled once per message type.

Some values are wrong whatever the RPC: a NUL character in text (Postgres cannot store
it, and it became INTERNAL), a ``google.protobuf.Timestamp`` or ``Duration`` outside
the range protobuf defines for it (Python cannot even convert one to a datetime). The
kit rejects them with INVALID_ARGUMENT naming the field before any handler runs
(``decoding``), for every message of every service, so no servicer has to remember.

From a message's descriptor this module compiles, once per type, a walk over only the
fields that can hold such a value (strings, timestamps, durations, and messages,
lists and maps that lead to one); a type with none gets no walk at all. The NUL walk
runs only when the request's bytes contain a zero byte at all: UTF-8 encodes U+0000
as 0x00, so most requests skip it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

Problem = tuple[str, str]
"""(field path relative to the message checked, what is wrong with it)."""
Check = Callable[[Any], Problem | None]

TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"
_MIN_TIMESTAMP_S = -62_135_596_800  # 0001-01-01T00:00:00Z
_MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_DURATION_S = 315_576_000_000  # 10,000 years
_MAX_NANOS = 999_999_999
_NUL = "\x00"
_NUL_PROBLEM = "contains a NUL character (\\x00), which text cannot hold; remove it"


@dataclass(frozen=True, slots=True)
class MessageChecks:
    """The compiled checks of one request message type."""

    text: Check | None
    """Finds a string with a NUL in it; None when the type has no string anywhere."""
    times: Check | None
    """Finds an out-of-range Timestamp or Duration; None when the type has none."""

    def problem(self, message: Any, data: bytes) -> str | None:
        """What is wrong with ``message`` (decoded from ``data``), or None."""
        if self.text is not None and b"\x00" in data:
            found = self.text(message)
            if found is not None:
                return f"{found[0]} {found[1]}"
        if self.times is not None:
            found = self.times(message)
            if found is not None:
                return f"{found[0]} {found[1]}"
        return None


@cache
def checks_for(descriptor: Descriptor) -> MessageChecks | None:
    """The checks of messages of ``descriptor``'s type; None when it needs none."""
    text = _compile(descriptor, _string_leaf)
    times = _compile(descriptor, _time_leaf)
    if text is None and times is None:
        return None
    return MessageChecks(text, times)


# A leaf rule: given a field, a check of one value of it, or None if the field is no leaf.
LeafRule = Callable[[FieldDescriptor], Callable[[Any], str | None] | None]


def _string_leaf(field: FieldDescriptor) -> Callable[[Any], str | None] | None:
    if field.type != FieldDescriptor.TYPE_STRING:
        return None
    return _nul_in


def _nul_in(value: str) -> str | None:
    return _NUL_PROBLEM if _NUL in value else None


def _time_leaf(field: FieldDescriptor) -> Callable[[Any], str | None] | None:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    name = field.message_type.full_name
    if name == TIMESTAMP:
        return _timestamp_problem
    if name == DURATION:
        return _duration_problem
    return None


def _timestamp_problem(value: Any) -> str | None:
    seconds, nanos = value.seconds, value.nanos
    if _MIN_TIMESTAMP_S <= seconds <= _MAX_TIMESTAMP_S and 0 <= nanos <= _MAX_NANOS:
        return None
    return (
        f"is outside the range of a google.protobuf.Timestamp (seconds={seconds}, "
        f"nanos={nanos}): it must lie in 0001-01-01T00:00:00Z..9999-12-31T23:59:59.999999999Z "
        "with nanos in 0..999,999,999"
    )


def _duration_problem(value: Any) -> str | None:
    seconds, nanos = value.seconds, value.nanos
    if (
        -_MAX_DURATION_S <= seconds <= _MAX_DURATION_S
        and -_MAX_NANOS <= nanos <= _MAX_NANOS
        and not (seconds > 0 > nanos or seconds < 0 < nanos)
    ):
        return None
    return (
        f"is outside the range of a google.protobuf.Duration (seconds={seconds}, "
        f"nanos={nanos}): seconds must lie within +-315,576,000,000 and nanos within "
        "+-999,999,999 with the same sign as seconds"
    )


def _compile(root: Descriptor, leaf: LeafRule) -> Check | None:
    """A check of ``root`` messages for values ``leaf`` rejects; None if none can occur."""
    types = _reachable_types(root, leaf)
    relevant = _types_leading_to_leaves(types, leaf)
    if root.full_name not in relevant:
        return None
    checks: dict[str, Check] = {}
    for name in relevant:
        checks[name] = _message_check(types[name], leaf, relevant, checks)
    return checks[root.full_name]


def _reachable_types(root: Descriptor, leaf: LeafRule) -> dict[str, Descriptor]:
    """Every message type reachable from ``root``, stopping at leaves (e.g. Timestamp)."""
    found = {root.full_name: root}
    pending = [root]
    while pending:
        for field in pending.pop().fields:
            if field.type != FieldDescriptor.TYPE_MESSAGE or leaf(field) is not None:
                continue
            child = field.message_type
            if child.full_name not in found:
                found[child.full_name] = child
                pending.append(child)
    return found


def _types_leading_to_leaves(types: dict[str, Descriptor], leaf: LeafRule) -> set[str]:
    """The types with a leaf field, or a field of such a type (to a fixed point: cycles)."""
    relevant: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, descriptor in types.items():
            if name in relevant:
                continue
            for field in descriptor.fields:
                if leaf(field) is not None or (
                    field.type == FieldDescriptor.TYPE_MESSAGE
                    and field.message_type.full_name in relevant
                ):
                    relevant.add(name)
                    changed = True
                    break
    return relevant


def _message_check(
    descriptor: Descriptor, leaf: LeafRule, relevant: set[str], checks: dict[str, Check]
) -> Check:
    field_checks = [
        check
        for field in descriptor.fields
        if (check := _field_check(field, leaf, relevant, checks)) is not None
    ]

    def check_message(message: Any) -> Problem | None:
        for field_check in field_checks:
            found = field_check(message)
            if found is not None:
                return found
        return None

    return check_message


def _field_check(
    field: FieldDescriptor, leaf: LeafRule, relevant: set[str], checks: dict[str, Check]
) -> Check | None:
    name = field.name
    if _is_map(field):
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        key_check = leaf(key_field)
        value_check = _value_check(value_field, leaf, relevant, checks)
        if key_check is None and value_check is None:
            return None
        return _map_check(name, key_check, value_check)
    value_check = _value_check(field, leaf, relevant, checks)
    if value_check is None:
        return None
    if field.is_repeated:
        return _repeated_check(name, value_check)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _present_message_check(name, value_check)
    return _singular_check(name, value_check)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.is_repeated
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


ValueCheck = Callable[[Any], Problem | None]
"""A check of one value of a field: (path below the value, problem), path '' for the value."""


def _value_check(
    field: FieldDescriptor, leaf: LeafRule, relevant: set[str], checks: dict[str, Check]
) -> ValueCheck | None:
    rule = leaf(field)
    if rule is not None:

        def check_leaf(value: Any) -> Problem | None:
            problem = rule(value)
            return None if problem is None else ("", problem)

        return check_leaf
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    type_name = field.message_type.full_name
    if type_name not in relevant:
        return None

    def check_child(value: Any) -> Problem | None:
        found = checks[type_name](value)  # looked up late: types may be recursive
        return None if found is None else (f".{found[0]}", found[1])

    return check_child


def _singular_check(name: str, check: ValueCheck) -> Check:
    def check_singular(message: Any) -> Problem | None:
        found = check(getattr(message, name))
        return None if found is None else (name + found[0], found[1])

    return check_singular


def _present_message_check(name: str, check: ValueCheck) -> Check:
    def check_present(message: Any) -> Problem | None:
        if not message.HasField(name):
            return None
        found = check(getattr(message, name))
        return None if found is None else (name + found[0], found[1])

    return check_present


def _repeated_check(name: str, check: ValueCheck) -> Check:
    def check_repeated(message: Any) -> Problem | None:
        for index, value in enumerate(getattr(message, name)):
            found = check(value)
            if found is not None:
                return (f"{name}[{index}]{found[0]}", found[1])
        return None

    return check_repeated


def _map_check(
    name: str,
    key_check: Callable[[Any], str | None] | None,
    value_check: ValueCheck | None,
) -> Check:
    def check_map(message: Any) -> Problem | None:
        for key, value in getattr(message, name).items():
            if key_check is not None:
                problem = key_check(key)
                if problem is not None:
                    return (f"{name} key {key!r}", problem)
            if value_check is not None:
                found = value_check(value)
                if found is not None:
                    return (f"{name}[{key!r}]{found[0]}", found[1])
        return None

    return check_map
