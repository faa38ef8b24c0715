"""Training sets (domain/training.py): a content id of the logical table, and label rows
that come back as they were sent."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from libs.errors import InvalidArgument
from services.feature_store.domain.training import ROW_NUMBER, content_id, label_keys

TABLE = pa.table(
    {
        "n": pa.array([1, None, 3], pa.int64()),
        "s": pa.array(["x", None, ""]),
        "f": pa.array([1.5, None, float("nan")]),
        "b": pa.array([True, None, False]),
        "t": pa.array(
            [datetime(2020, 1, 1, tzinfo=UTC), None, datetime(1, 1, 1, tzinfo=UTC)],
            pa.timestamp("us", tz="UTC"),
        ),
        "d": pa.array([date(2020, 1, 1), None, date(1, 1, 1)], pa.date32()),
        "m": pa.array([Decimal("1.25"), None, Decimal("-3.50")], pa.decimal128(5, 2)),
    }
)


def _with_garbage(array: pa.Array) -> pa.Array:
    """The same values with other bytes under the null slot (a fixed-width column)."""
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8).copy()
    width = array.type.bit_width // 8
    data[width : 2 * width] = 0x5A  # row 1 is null
    return pa.Array.from_buffers(array.type, len(array), [array.buffers()[0], pa.py_buffer(data)])


def test_the_id_depends_on_the_content_only() -> None:
    reference = content_id(TABLE)
    assert reference.startswith("sha256:") and len(reference) == 71
    rechunked = pa.Table.from_batches(TABLE.to_batches(max_chunksize=1))
    garbage = TABLE.set_column(0, "n", _with_garbage(TABLE.column("n").chunk(0)))
    garbage = garbage.set_column(2, "f", _with_garbage(TABLE.column("f").chunk(0)))
    offsets = np.array([0, 1, 8, 8], dtype=np.int32)  # "GARBAGE" under the null string
    strings = pa.Array.from_buffers(
        pa.string(),
        3,
        [
            TABLE.column("s").chunk(0).buffers()[0],
            pa.py_buffer(offsets.tobytes()),
            pa.py_buffer(b"xGARBAGE"),
        ],
    )
    garbage = garbage.set_column(1, "s", strings)
    assert garbage.drop_columns(["f"]).equals(TABLE.drop_columns(["f"]))  # NaN != NaN
    assert content_id(rechunked) == content_id(garbage) == reference
    assert content_id(pa.table(TABLE.to_pydict(), schema=TABLE.schema)) == reference


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.rename_columns(["N", *t.column_names[1:]]),
        lambda t: t.set_column(0, "n", pa.array([1, None, 4], pa.int64())),
        lambda t: t.set_column(0, "n", pa.array([1, 0, 3], pa.int64())),  # null vs 0
        lambda t: t.set_column(1, "s", pa.array(["x", "", ""])),  # null vs ''
        lambda t: t.set_column(2, "f", pa.array([-0.0 + 1.5, None, 0.0])),
        lambda t: t.set_column(0, "n", pa.array([1, None, 3], pa.int32())),  # type
        lambda t: t.slice(0, 2),
        lambda t: t.set_column(4, "t", t.column("t").cast(pa.timestamp("us", tz="Etc/UTC"))),
    ],
)
def test_other_content_has_another_id(change: object) -> None:
    assert content_id(change(TABLE)) != content_id(TABLE)  # type: ignore[operator]


def test_label_keys_are_what_the_join_reads() -> None:
    labels = pa.table(
        {
            "acct": pa.array([7, None], pa.int64()),
            "event_time": pa.array([1_700_000_000_123_456_000, 0], pa.timestamp("ns", tz="UTC")),
            "Odd name;": pa.array(["a", "b"]),
        }
    )
    keys = label_keys(labels, ["acct"], "entity_rows_arrow")
    assert keys.column_names == ["acct", "event_time", ROW_NUMBER]
    assert keys.column("acct").to_pylist() == ["7", None]
    assert keys.schema.field("event_time").type == pa.timestamp("us")
    with pytest.raises(InvalidArgument, match="nanosecond"):
        label_keys(
            labels.set_column(1, "event_time", pa.array([1, 2], pa.timestamp("ns"))),
            ["acct"],
            "entity_rows_arrow",
        )
    with pytest.raises(InvalidArgument, match="two columns named 'x'"):
        label_keys(pa.table([[1], [2]], names=["x", "x"]), ["x"], "entity_rows_arrow")
    with pytest.raises(InvalidArgument, match=r"entity_rows_arrow\.acct"):
        label_keys(
            labels.set_column(0, "acct", pa.array([1.5, 2.5])), ["acct"], "entity_rows_arrow"
        )
