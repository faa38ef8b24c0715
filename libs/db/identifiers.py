"""SQL identifiers: validated and quoted, never interpolated raw.

Values travel as bind parameters; identifiers (schema and table names) are part of
SQL text only after passing through here. The one exception, a statement sent with its
transaction's ``BEGIN``, renders its values through ``libs.db.literals``.
"""

from __future__ import annotations

import re

from libs.errors import InvalidArgument

_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def validate_identifier(name: str, *, what: str = "identifier") -> str:
    """Return ``name`` if it is a safe lowercase SQL identifier, else raise InvalidArgument."""
    if not _IDENTIFIER_RE.fullmatch(name):
        raise InvalidArgument(
            f"{what} {name!r} is not a valid identifier: use 1-63 characters of lowercase "
            "letters, digits and '_', not starting with a digit"
        )
    return name


def quote_ident(name: str, *, what: str = "identifier") -> str:
    """Validate ``name`` and return it double-quoted for use in SQL text."""
    return f'"{validate_identifier(name, what=what)}"'
