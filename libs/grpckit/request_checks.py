"""Checks every request message gets at decode time, compiled once per message type.

Some values are wrong whatever the RPC: a NUL character in text (Postgres cannot store
it, and it became INTERNAL), a ``google.protobuf.Timestamp`` or ``Duration`` outside
the range protobuf defines for it (Python cannot even convert one to a datetime). The
kit rejects them with INVALID_ARGUMENT naming the field before any handler runs
(``decoding``), for every message of every service, so no servicer has to remember.

From a message's descriptor this module compiles, once per type, a walk over only the
fields that can hold such a value (strings, timestamps, durations, and messages,
lists and maps that lead to one); a type with none gets no walk at all. Walking costs
about a microsecond per value (upb builds a Python object for each message it hands
out), so a walk runs only when the request's bytes could hold what it looks for: the
NUL walk when they contain a zero byte (UTF-8 encodes U+0000 as 0x00), the range walk
when they contain the first byte of the key of a Timestamp or Duration field. Most
requests skip both: the checks then cost two ``bytes`` scans.
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
class Walk:
    """One compiled walk over a message type, and when it is needed at all."""

    check: Check
    """Finds the first bad value: (its path, what is wrong)."""
    needles: tuple[bytes, ...]
    """Single bytes of which the encoding has at least one when a bad value can be in it."""


@dataclass(frozen=True, slots=True)
class MessageChecks:
    """The compiled checks of one request message type."""

    walks: tuple[Walk, ...]
    """The NUL walk (strings) and the range walk (timestamps, durations), where needed."""

    def problem(self, message: Any, data: bytes) -> str | None:
        """What is wrong with ``message`` (decoded from ``data``), or None."""
        for walk in self.walks:
            for needle in walk.needles:
                if needle in data:
                    found = walk.check(message)
                    if found is not None:
                        return f"{found[0]} {found[1]}"
                    break
        return None


@cache
def checks_for(descriptor: Descriptor) -> MessageChecks | None:
    """The checks of messages of ``descriptor``'s type; None when it needs none."""
    walks = []
    text = _compile(descriptor, _string_leaf)
    if text is not None:
        # UTF-8 encodes U+0000 as the byte 0x00: no zero byte, no NUL.
        walks.append(Walk(text[0], (b"\x00",)))
    times = _compile(descriptor, _time_leaf)
    if times is not None:
        # A Timestamp or Duration present in the message has its field's key in the bytes.
        walks.append(Walk(*times))
    return MessageChecks(tuple(walks)) if walks else None


LeafCheck = Callable[[Any], str | None]
"""What is wrong with one value of a leaf field (a string, a Timestamp...), or None."""
LeafRule = Callable[[FieldDescriptor], LeafCheck | None]
"""The check of a field's values if it is a leaf of the walk, else None."""


def _string_leaf(field: FieldDescriptor) -> LeafCheck | None:
    if field.type != FieldDescriptor.TYPE_STRING:
        return None
    return _nul_in


def _nul_in(value: str) -> str | None:
    return _NUL_PROBLEM if _NUL in value else None


def _time_leaf(field: FieldDescriptor) -> LeafCheck | None:
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


def _compile(root: Descriptor, leaf: LeafRule) -> tuple[Check, tuple[bytes, ...]] | None:
    """A check of ``root`` messages for values ``leaf`` rejects, and the first bytes of
    the keys of the fields that hold such values; None if none can occur."""
    types = _reachable_types(root, leaf)
    relevant = _types_leading_to_leaves(types, leaf)
    if root.full_name not in relevant:
        return None
    cells: dict[str, list[Check]] = {}
    for name in relevant:
        cells.setdefault(name, []).append(_message_check(types[name], leaf, relevant, cells))
    key_bytes = {
        _first_key_byte(field)
        for name in relevant
        for field in types[name].fields
        if leaf(field) is not None
    }
    return cells[root.full_name][0], tuple(sorted(key_bytes))


def _first_key_byte(field: FieldDescriptor) -> bytes:
    """The first byte of a leaf field's key in the wire format (the key's varint).

    Leaves (strings, Timestamps, Durations) are length-delimited: wire type 2.
    """
    key = (field.number << 3) | 2
    return bytes([(key & 0x7F) | (0x80 if key > 0x7F else 0)])


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
    descriptor: Descriptor, leaf: LeafRule, relevant: set[str], cells: dict[str, list[Check]]
) -> Check:
    field_checks = [
        check
        for field in descriptor.fields
        if (check := _field_check(field, leaf, relevant, cells)) is not None
    ]
    if len(field_checks) == 1:
        return field_checks[0]

    def check_message(message: Any) -> Problem | None:
        for field_check in field_checks:
            found = field_check(message)
            if found is not None:
                return found
        return None

    return check_message


def _field_check(
    field: FieldDescriptor, leaf: LeafRule, relevant: set[str], cells: dict[str, list[Check]]
) -> Check | None:
    name = field.name
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        key_rule = leaf(field.message_type.fields_by_name["key"])
        value_rule = leaf(value_field)
        value_cell = _child_cell(value_field, relevant, cells) if value_rule is None else None
        if key_rule is None and value_rule is None and value_cell is None:
            return None
        return _map_check(name, key_rule, value_rule, value_cell)
    rule = leaf(field)
    if rule is not None:
        if field.is_repeated:
            return _repeated_leaf_check(name, rule)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return _present_leaf_check(name, rule)
        return _singular_leaf_check(name, rule)
    cell = _child_cell(field, relevant, cells)
    if cell is None:
        return None
    if field.is_repeated:
        return _repeated_child_check(name, cell)
    return _present_child_check(name, cell)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.is_repeated
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


def _child_cell(
    field: FieldDescriptor, relevant: set[str], cells: dict[str, list[Check]]
) -> list[Check] | None:
    """Where the check of the field's message type will be (filled later: types may recurse)."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    type_name = field.message_type.full_name
    if type_name not in relevant:
        return None
    return cells.setdefault(type_name, [])


# One function per shape of field, so that a check costs one call per value walked.


def _singular_leaf_check(name: str, rule: LeafCheck) -> Check:
    def check_singular(message: Any) -> Problem | None:
        problem = rule(getattr(message, name))
        return None if problem is None else (name, problem)

    return check_singular


def _present_leaf_check(name: str, rule: LeafCheck) -> Check:
    def check_present(message: Any) -> Problem | None:
        if not message.HasField(name):
            return None
        problem = rule(getattr(message, name))
        return None if problem is None else (name, problem)

    return check_present


def _repeated_leaf_check(name: str, rule: LeafCheck) -> Check:
    def check_repeated(message: Any) -> Problem | None:
        for index, value in enumerate(getattr(message, name)):
            problem = rule(value)
            if problem is not None:
                return (f"{name}[{index}]", problem)
        return None

    return check_repeated


def _present_child_check(name: str, cell: list[Check]) -> Check:
    def check_present(message: Any) -> Problem | None:
        if not message.HasField(name):
            return None
        found = cell[0](getattr(message, name))
        return None if found is None else (f"{name}.{found[0]}", found[1])

    return check_present


def _repeated_child_check(name: str, cell: list[Check]) -> Check:
    def check_repeated(message: Any) -> Problem | None:
        check = cell[0]
        for index, value in enumerate(getattr(message, name)):
            found = check(value)
            if found is not None:
                return (f"{name}[{index}].{found[0]}", found[1])
        return None

    return check_repeated


def _map_check(
    name: str,
    key_rule: LeafCheck | None,
    value_rule: LeafCheck | None,
    value_cell: list[Check] | None,
) -> Check:
    def check_map(message: Any) -> Problem | None:
        value_check = value_cell[0] if value_cell is not None else None
        entries = getattr(message, name)
        for key in entries:  # the map's own iterator: .items() is a slow Python mixin
            value = entries[key]
            if key_rule is not None and (problem := key_rule(key)) is not None:
                return (f"{name} key {key!r}", problem)
            if value_rule is not None and (problem := value_rule(value)) is not None:
                return (f"{name}[{key!r}]", problem)
            if value_check is not None and (found := value_check(value)) is not None:
                return (f"{name}[{key!r}].{found[0]}", found[1])
        return None

    return check_map
