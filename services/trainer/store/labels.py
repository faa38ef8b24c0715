"""Running a job's label query: read-only, time-limited, and checked for shape.

The query runs in a READ ONLY, REPEATABLE READ transaction with ``statement_timeout``
set locally, through a prepared statement (Postgres's extended protocol takes exactly
one statement). What Postgres refuses comes back as a message that says what to fix.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import numpy as np
import pyarrow as pa

from libs.errors import FailedPrecondition, InvalidArgument
from services.trainer.domain.spec import LabelQuery, Split
from services.trainer.training_columns import LABEL, SPLIT

EVENT_TIME = "event_time"


async def read_labels(
    pool: asyncpg.Pool,
    query: LabelQuery,
    split: Split,
    *,
    join_keys: tuple[str, ...],
    max_rows: int,
) -> pa.Table:
    """Entity keys, ``event_time`` (the label time), ``__label`` and ``__split`` per row.

    Rows outside both sides of the split are dropped. InvalidArgument / FailedPrecondition
    say what to change in the query or the split.
    """
    async with pool.acquire() as conn:
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {int(query.timeout_s * 1000)}")
                statement = await conn.prepare(query.sql)
                columns = [a.name for a in statement.get_attributes()]
                _check_columns(columns, query, join_keys)
                rows = await statement.fetch()
        except asyncpg.ReadOnlySQLTransactionError as refused:
            raise InvalidArgument(
                f"label_source.query must only read: Postgres refused it in a read-only "
                f"transaction ({refused}). Remove the write (a data-modifying WITH, SELECT "
                "INTO, nextval(), FOR UPDATE)"
            ) from None
        except asyncpg.QueryCanceledError:
            raise FailedPrecondition(
                f"label_source.query ran past its {query.timeout_s:g} s statement timeout; "
                "make it cheaper (an index, a narrower time range) or raise "
                "label_source.timeout"
            ) from None
        except asyncpg.PostgresError as error:
            raise InvalidArgument(f"label_source.query failed in Postgres: {error}") from None
    if len(rows) > max_rows:
        raise FailedPrecondition(f"the label query returned {len(rows)} rows; at most {max_rows}")
    if not rows:
        raise FailedPrecondition(
            "the label query returned no rows: there is nothing to train on. Check its WHERE "
            "clause and that the label table is filled"
        )
    return _to_table(rows, columns, query, split, join_keys)


def _check_columns(columns: list[str], query: LabelQuery, join_keys: tuple[str, ...]) -> None:
    needed = [query.time_column, query.label_column, *join_keys]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InvalidArgument(
            f"label_source.query must return columns {needed} (the feature service's entity "
            f"key(s), the label time and the label); it returns {columns}, without {missing}. "
            "Rename with AS, or set label_source.label_column / time_column"
        )
    if len(set(columns)) != len(columns):
        raise InvalidArgument(f"label_source.query returns a column twice: {columns}")


def _to_table(
    rows: list[asyncpg.Record],
    columns: list[str],
    query: LabelQuery,
    split: Split,
    join_keys: tuple[str, ...],
) -> pa.Table:
    times, labels, sides, kept = [], [], [], []
    for i, row in enumerate(rows):
        at = row[query.time_column]
        if not isinstance(at, datetime):
            raise InvalidArgument(
                f"label_source.query: {query.time_column!r} must be a timestamp (timestamptz), "
                f"got {type(at).__name__} in row {i + 1}"
            )
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        side = split.side(at)
        if side is None:
            continue
        value = row[query.label_column]
        if value is None or value not in (0, 1, True, False):
            raise InvalidArgument(
                f"label_source.query: {query.label_column!r} must be a boolean or 0/1 and never "
                f"null (binary classification); row {i + 1} has {value!r}"
            )
        times.append(at)
        labels.append(float(value))
        sides.append(0 if side == "train" else 1)
        kept.append(row)
    train, validation = sides.count(0), sides.count(1)
    if train == 0 or validation == 0:
        raise FailedPrecondition(
            f"the split leaves {train} training and {validation} validation rows of the "
            f"{len(rows)} labels; both sides need rows: move split.validation_start (and "
            "train_start / validation_end) within the label times "
            f"({min(r[query.time_column] for r in rows).isoformat()} .. "
            f"{max(r[query.time_column] for r in rows).isoformat()})"
        )
    if len(set(labels)) < 2:
        raise FailedPrecondition(
            f"every label is {labels[0]:g}: a classifier needs both classes in the label set"
        )
    table = {
        key: pa.array([None if r[key] is None else str(r[key]) for r in kept]) for key in join_keys
    }
    table[EVENT_TIME] = pa.array(times, pa.timestamp("us", tz="UTC"))
    table[LABEL] = pa.array(np.asarray(labels, dtype=np.float64))
    table[SPLIT] = pa.array(np.asarray(sides, dtype=np.int8))
    return pa.table(table)


class LabelReader:
    """``read_labels`` on the service's pool, with its row limit."""

    def __init__(self, pool: asyncpg.Pool, max_rows: int) -> None:
        self._pool = pool
        self._max_rows = max_rows

    async def read(self, query: LabelQuery, split: Split, join_keys: tuple[str, ...]) -> pa.Table:
        return await read_labels(
            self._pool, query, split, join_keys=join_keys, max_rows=self._max_rows
        )
