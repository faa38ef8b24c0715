"""Entity keys: one join key or several (a composite key), and the one text a key is
stored as (ADR 0023).

Every store keeps an entity's key in one text column (``entity_key`` of the online and
offline tables, tiles, raw stream events), so a composite key — card_id + merchant_id — is
encoded into one text at the boundary, by ``encode_key``, and nothing below the boundary
knows keys have parts: joins, replicas, tiles and indexes compare one text as before.

The encoding: a key of one part is that part, unchanged (so keys stored before composite
keys existed keep their meaning); a key of several parts is the parts in join-key order,
each with ``\\`` written ``\\\\`` and ``|`` written ``\\|``, joined by ``|``. For a given number
of parts it is injective and ``decode_key`` inverts it; the number of parts is the
entity's, and an entity's keys never change once applied (a breaking change), so keys of
different arities are never compared. INT64 parts are their decimal text, as single keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import InvalidArgument
from services.feature_store.domain.values import entity_keys

SEPARATOR = "|"
ESCAPE = "\\"


def join_keys_of(entity: m.Entity) -> tuple[str, ...]:
    """The entity's join keys in order: ``join_keys``, else the one ``join_key``."""
    return tuple(entity.join_keys) or (entity.join_key,)


def key_types_of(entity: m.Entity) -> tuple[int, ...]:
    """The type of each join key (``key_types``, else ``key_type`` for every part)."""
    return tuple(entity.key_types) or (entity.key_type,) * len(join_keys_of(entity))


def key_column(join_keys: Sequence[str]) -> str:
    """The name an entity's (encoded) key goes by where one column holds it — the join
    key itself, or a composite key's names joined by ``:`` (no join key holds a ``:``, so
    it cannot clash with one): label tables in the offline join, request groupings."""
    return join_keys[0] if len(join_keys) == 1 else ":".join(join_keys)


def encode_key(parts: Sequence[str]) -> str:
    """The stored text of a key of these parts (see the module's docstring)."""
    if len(parts) == 1:
        return parts[0]
    return SEPARATOR.join(_escaped(part) for part in parts)


def _escaped(part: str) -> str:
    return part.replace(ESCAPE, ESCAPE + ESCAPE).replace(SEPARATOR, ESCAPE + SEPARATOR)


def encode_key_column(
    parts: Sequence[pa.Array | pa.ChunkedArray],
) -> pa.Array | pa.ChunkedArray:
    """``encode_key`` of every row of these string columns (one per part), vectorized for
    label tables; a row with a null part has a null key (it matches no stored key)."""
    if len(parts) == 1:
        return parts[0]
    escaped = [
        pc.replace_substring(
            pc.replace_substring(part, ESCAPE, ESCAPE + ESCAPE), SEPARATOR, ESCAPE + SEPARATOR
        )
        for part in parts
    ]
    return pc.binary_join_element_wise(*escaped, SEPARATOR)


def decode_key(key: str, arity: int) -> tuple[str, ...]:
    """The parts of a key ``encode_key`` made of ``arity`` parts; ValueError when ``key``
    is not such a key."""
    if arity == 1:
        return (key,)
    parts: list[str] = []
    current: list[str] = []
    characters = iter(key)
    for character in characters:
        if character == ESCAPE:
            escaped = next(characters, "")
            if escaped not in (ESCAPE, SEPARATOR):
                raise ValueError(f"{key!r} has a {ESCAPE!r} before {escaped!r}")
            current.append(escaped)
        elif character == SEPARATOR:
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    if len(parts) != arity:
        raise ValueError(f"{key!r} has {len(parts)} parts, not {arity}")
    return tuple(parts)


def check_key_columns(
    given: Iterable[str], join_keys: Iterable[str], where: str, *, others: Iterable[str] = ()
) -> None:
    """InvalidArgument naming a join key ``given`` lacks, or a name it has that is
    neither one of ``join_keys`` nor of ``others`` (names let through)."""
    names, needed = set(given), list(dict.fromkeys(join_keys))
    missing = [key for key in needed if key not in names]
    if missing:
        raise InvalidArgument(
            f"{where} lacks the join key {missing[0]!r}: the selection's entities are keyed "
            f"by {needed}, give one column per key"
        )
    extra = sorted(names - set(needed) - set(others))
    if extra:
        raise InvalidArgument(
            f"{where} has {extra[0]!r}, which is not a join key of the selection "
            f"(its keys are {needed}) nor of any entity: leave it out"
        )


def request_keys(entities: Mapping[str, m.RepeatedValue], join_keys: Sequence[str]) -> list[str]:
    """The stored key of every entity row of a request (one column per join key, all
    present: ``check_key_columns``), ``encode_key`` of its parts; InvalidArgument for a
    value that cannot be a key."""
    if len(join_keys) == 1:
        return entity_keys(entities[join_keys[0]], join_keys[0])
    columns = []
    for key in join_keys:
        column = entity_keys(entities[key], key)
        text = "".join(column)  # checked a column at a time: most parts need no escape
        if "\x00" in text:
            raise InvalidArgument(f"entity key {key!r} values must not hold NUL characters")
        if ESCAPE in text or SEPARATOR in text:
            column = [_escaped(part) for part in column]
        columns.append(column)
    return [SEPARATOR.join(parts) for parts in zip(*columns, strict=True)]
