"""Sequence columns: the newest N events of each row, placed in padded slots.

A sequence arrives as several list columns (one per field) with equal lengths per row,
ordered oldest first (newest last); a null or empty list means no events. Each column
may be a pyarrow list array (chunked or not), a Python list of lists/None, or a numpy
object array of lists/arrays/None. ``newest_events`` keeps the last ``max_length``
events of every row and says which slot each lands in: with ``left`` padding the newest
event sits in slot N-1 (the same slot for every entity, whatever its history length),
with ``right`` padding the kept events start at slot 0. Fitting (``fit``) and encoding
(``Preprocessor``) both go through it, so they keep exactly the same events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from libs.preprocessing.spec import PADDINGS

Column = Sequence[object] | np.ndarray | pa.Array | pa.ChunkedArray


@dataclass(frozen=True)
class Events:
    """The kept events of a batch of rows, in row order then event order."""

    rows: int
    row: np.ndarray
    """int64 [kept events]: the row of each kept event."""
    slot: np.ndarray
    """int64 [kept events]: its slot in [0, max_length)."""
    fields: Mapping[str, pa.Array | list[object]]
    """Each field's values of the kept events (element nulls kept as None / nulls): a
    pyarrow array for Arrow input, a Python list otherwise."""


def as_list_array(values: Column, name: str) -> pa.Array:
    """``values`` as one pyarrow list array (null for a row without events)."""
    if isinstance(values, pa.ChunkedArray):
        array = values.combine_chunks() if values.num_chunks else pa.array([], type=values.type)
    elif isinstance(values, pa.Array):
        array = values
    else:
        items = [_as_list(v, name) for v in values]  # type: ignore[union-attr]
        array = pa.array(items)
    if pa.types.is_null(array.type):  # every row without events: the type is unknown
        array = pa.nulls(len(array), pa.list_(pa.float64()))
    if pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.cast(pa.list_(array.type.value_type))
    if not pa.types.is_list(array.type):
        raise TypeError(
            f"sequence feature {name!r} must be a list per row (e.g. list<double>), "
            f"got {array.type}"
        )
    return array


def _as_list(value: object, name: str) -> list[object] | tuple[object, ...] | None:
    if value is None or isinstance(value, list | tuple):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()  # type: ignore[no-any-return]
    raise TypeError(
        f"sequence feature {name!r} must be a list per row (None or [] for no events), "
        f"got a {type(value).__name__}"
    )


def newest_events(
    columns: Mapping[str, Column],
    fields: Sequence[str],
    *,
    max_length: int,
    padding: str,
    sequence: str,
) -> Events:
    """Keep the newest ``max_length`` events of every row; ValueError if the fields'
    lists differ in length on some row (they describe the same events)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    missing = [f for f in fields if f not in columns]
    if missing:
        raise KeyError(f"no values for the fields {missing} of sequence {sequence!r}")
    flattened = {f: _flatten(columns[f], f) for f in fields}
    rows = {len(lengths) for lengths, _ in flattened.values()}
    if len(rows) > 1:
        raise ValueError(f"the fields of sequence {sequence!r} differ in rows: {sorted(rows)}")
    n_rows = rows.pop() if rows else 0
    lengths = None
    for f, (these, _) in flattened.items():
        if lengths is None:
            lengths, first = these, f
        elif not np.array_equal(lengths, these):
            at = int(np.flatnonzero(lengths != these)[0])
            raise ValueError(
                f"sequence {sequence!r}: row {at} has {lengths[at]} events in {first!r} but "
                f"{these[at]} in {f!r}; the fields of one sequence describe the same events"
            )
    if lengths is None:
        lengths = np.zeros(n_rows, dtype=np.int64)
    kept = np.minimum(lengths, max_length)
    total = int(lengths.sum())
    row = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    position = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    dropped = (lengths - kept)[row]
    index = np.flatnonzero(position >= dropped)
    row = row[index]
    slot = position[index] - dropped[index]
    if padding == "left":
        slot = slot + (max_length - kept)[row]
    every = len(index) == total
    return Events(
        rows=n_rows,
        row=row,
        slot=slot,
        fields={f: flat if every else _take(flat, index) for f, (_, flat) in flattened.items()},
    )


def _flatten(values: Column, name: str) -> tuple[np.ndarray, pa.Array | list[object]]:
    """(events per row, every row's events one after another): pyarrow kernels for Arrow
    input, plain Python for lists (a handful of rows at serving time: ~10x cheaper than a
    round trip through Arrow)."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        array = as_list_array(values, name)
        lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
        return np.asarray(lengths, dtype=np.int64), array.flatten()
    items = [_as_list(v, name) for v in values]  # type: ignore[union-attr]
    lengths = np.fromiter((0 if v is None else len(v) for v in items), np.int64, len(items))
    return lengths, [x for v in items if v for x in v]


def _take(flat: pa.Array | list[object], index: np.ndarray) -> pa.Array | list[object]:
    if isinstance(flat, list):
        return [flat[i] for i in index.tolist()]
    return flat.take(pa.array(index, type=pa.int64()))


def is_text_list(values: Column) -> bool:
    """Whether a sequence field holds strings (a categorical field)."""
    array = as_list_array(values, "?")
    value_type = array.type.value_type
    return pa.types.is_string(value_type) or pa.types.is_large_string(value_type)


def epoch_seconds(values: Column) -> np.ndarray:
    """Reference times as float64 epoch seconds, one per row: floats (already seconds),
    pyarrow timestamps or numpy datetime64 (whole microseconds, divided by 1e6 exactly as
    ``seconds_from_micros`` does, so a label time offline and a read time online that are
    the same microsecond give the same bits)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.float64())
    if isinstance(values, pa.Array):
        if pa.types.is_timestamp(values.type):
            micros = values.cast(pa.timestamp("us", tz=values.type.tz)).cast(pa.int64())
            return seconds_from_micros(micros.to_numpy(zero_copy_only=False))
        return np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    array = np.asarray(values)
    if array.dtype.kind == "M":
        return seconds_from_micros(array.astype("datetime64[us]").astype(np.int64))
    return array.astype(np.float64)


def seconds_from_micros(micros: np.ndarray | int) -> np.ndarray:
    """Whole epoch microseconds as float64 epoch seconds (the one conversion used)."""
    return np.asarray(micros, dtype=np.int64).astype(np.float64) / 1e6


def event_ages(
    times: np.ndarray, row: np.ndarray, reference_times: np.ndarray | None
) -> np.ndarray:
    """Each kept event's age in seconds: its row's reference time minus its event time
    (NaN stays NaN). ``reference_times`` is float64 epoch seconds per row (label time
    offline, the time the features were read online)."""
    if reference_times is None:
        raise ValueError(
            "this preprocessing reads the events' ages: pass reference_times (each row's "
            "label time offline, the time its features were read online)"
        )
    return np.asarray(reference_times, dtype=np.float64)[row] - times
