"""Plausible values, harvested from valid requests and their replies.

Every scalar found under a field name becomes a candidate for any field of that name
(``model_name`` -> the models that exist, ``page_token`` -> a reply's real
``next_page_token``), and every sub-message a candidate for its type;
``descriptor_strategies.Hints`` carries them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tests.fuzz.descriptor_strategies import copy_of, is_map

_ALSO_AS = {"next_page_token": "page_token"}
"""Values that are plausible under another field's name too (a reply's next page token
is what a request's page token takes)."""


def harvest(
    messages: Sequence[Message], into: dict[str, list[Any]], types: dict[str, list[Message]]
) -> None:
    """Collect scalar values by field name and sub-messages by type from ``messages``."""
    for message in messages:
        _harvest_one(message, into, types)


def _harvest_one(
    message: Message, into: dict[str, list[Any]], types: dict[str, list[Message]]
) -> None:
    _add(types.setdefault(message.DESCRIPTOR.full_name, []), copy_of(message))
    for fd, value in message.ListFields():
        if is_map(fd):
            value_fd = fd.message_type.fields[1]
            for key, item in value.items():
                _add(into.setdefault(f"{fd.name}[]", []), key)
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    _harvest_one(item, into, types)
                else:
                    _add(into.setdefault(fd.name, []), item)
            continue
        items = list(value) if fd.is_repeated else [value]
        for item in items:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                _harvest_one(item, into, types)
            elif not (isinstance(item, bytes) and len(item) > 1_000_000):
                _add(into.setdefault(fd.name, []), item)
                if fd.name in _ALSO_AS:
                    _add(into.setdefault(_ALSO_AS[fd.name], []), item)


def _add(values: list[Any], value: Any) -> None:
    if len(values) < 64 and value not in values:
        values.append(value)
