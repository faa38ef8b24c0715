"""Deleting many rows as a series of short statements."""

from __future__ import annotations

import asyncpg

DELETE_SLICE_ROWS = 10_000


async def delete_in_slices(
    executor: asyncpg.Pool | asyncpg.Connection,
    sql: str,
    *args: object,
    slice_rows: int = DELETE_SLICE_ROWS,
) -> int:
    """Run ``sql`` (a DELETE whose last parameter caps the rows it removes) until it
    removes fewer than ``slice_rows``; how many rows it removed in all.

    Each statement is its own short transaction, so pruning a large table never holds
    locks or bloats one transaction for long.
    """
    deleted = 0
    while True:
        status = await executor.execute(sql, *args, slice_rows)
        count = int(status.split()[-1])  # "DELETE <n>"
        deleted += count
        if count < slice_rows:
            return deleted
