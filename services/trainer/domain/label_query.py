"""The label query's shape, checked before it reaches Postgres: one SELECT, nothing else.

This is the first of three guards: it refuses anything that is not a single statement
starting with SELECT or WITH (comments and string literals stripped first, so a ';'
inside a literal is fine). Postgres then runs it in a READ ONLY transaction (a
data-modifying CTE, SELECT INTO, nextval() or a locking clause fail there) under a
statement timeout (store/labels.py).
"""

from __future__ import annotations

import re

_LEADING = re.compile(r"^\s*\(*\s*(\w+)", re.IGNORECASE)
_TOKENS = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?\*/)
      | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*"|\$(?P<tag>\w*)\$.*?\$(?P=tag)\$)
      | (?P<semicolon>;)
      | (?P<other>[^'"$;\-/]+|.)""",
    re.VERBOSE | re.DOTALL,
)
MAX_QUERY_CHARS = 100_000


def check_label_query(query: str) -> str:
    """``query`` without a trailing ';' if it is one SELECT; ValueError saying what to fix."""
    if not query.strip():
        raise ValueError("label_source.query is required: a SELECT returning keys, time and label")
    if len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"label_source.query is longer than {MAX_QUERY_CHARS} characters")
    code, statements = [], 1
    for match in _TOKENS.finditer(query):
        if match.group("comment"):
            code.append(" ")
        elif match.group("semicolon"):
            statements += 1
            code.append(";")
        elif match.group("string"):
            code.append("''")
        else:
            code.append(match.group(0))
    text = "".join(code).strip()
    while text.endswith(";"):  # one trailing semicolon (or several) ends the only statement
        text = text[:-1].rstrip()
        statements -= 1
    if ";" in text or statements > 1:
        raise ValueError(
            "label_source.query must be a single SELECT statement; it has several (';'). "
            "Join or UNION what you need into one query"
        )
    first = _LEADING.match(text)
    if first is None or first.group(1).upper() not in ("SELECT", "WITH"):
        word = first.group(1).upper() if first else text[:20]
        raise ValueError(
            f"label_source.query must be a SELECT (or WITH ... SELECT), not {word}: the trainer "
            "only reads labels"
        )
    return query.strip().rstrip(";").rstrip()
