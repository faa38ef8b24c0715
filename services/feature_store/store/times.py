"""Times leaving Postgres as text (CSV for DuckDB): UTC wall clock, never ``±infinity``.

asyncpg stores the first and last valid instants (0001-01-01T00:00:00Z and
9999-12-31T23:59:59.999999Z) as ``-infinity``/``infinity`` (see domain/times.py). A CSV
export would print those words, which DuckDB reads as its own infinities and Arrow as
out-of-range integers; here they become the instants they stand for.
"""

from __future__ import annotations

FIRST = "'0001-01-01 00:00:00+00'::timestamptz"
LAST = "'9999-12-31 23:59:59.999999+00'::timestamptz"


def utc_wall_clock(column: str) -> str:
    """SQL: the timestamptz ``column`` (already quoted) as a UTC ``timestamp``, with
    ``±infinity`` as the first and last instants and NULL kept."""
    return (
        f"(CASE WHEN {column} = '-infinity' THEN {FIRST} WHEN {column} = 'infinity' "
        f"THEN {LAST} ELSE {column} END) AT TIME ZONE 'UTC'"
    )
