"""Values rendered as SQL text, for the one kind of statement that cannot take parameters.

Everywhere else values travel as bind parameters. A statement sent in the same message
as its transaction's ``BEGIN`` (``BoundedConnection.transaction_opened_with``) goes
through Postgres' simple query protocol, which has none; values are spliced into it
only through these functions, each rendering a value so that no content can end its
literal early, whatever the server's string settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from libs.errors import InvalidArgument


def text_literal(value: str) -> str:
    """``value`` as a dollar-quoted string constant (backslashes and quotes stay literal).

    The tag is chosen so that it first appears in ``value + tag`` at the end: nothing in
    the value, not even a suffix like ``$lathe``, can close the constant early.
    """
    if "\x00" in value:
        raise InvalidArgument("a text value for SQL must not contain NUL characters")
    n = 0
    while True:
        tag = f"$lathe{n}$" if n else "$lathe$"
        if (value + tag).find(tag) == len(value):
            return f"{tag}{value}{tag}"
        n += 1


def uuid_array_literal(values: Iterable[UUID]) -> str:
    """``values`` as a ``uuid[]`` constant; only ``UUID`` objects, whose text is hex and dashes."""
    rendered = []
    for value in values:
        if not isinstance(value, UUID):
            raise TypeError(f"uuid_array_literal takes UUID objects, got {type(value).__name__}")
        rendered.append(str(value))
    return "'{" + ",".join(rendered) + "}'::uuid[]"
