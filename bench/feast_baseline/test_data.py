"""The shared benchmark data set is deterministic and has the promised shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bench.feast_baseline import data

SMALL = data.DataSpec(entities=200, rows_per_entity=5, labels=3000, correction_fraction=0.05)


def test_same_seed_same_tables() -> None:
    for build in (data.entity_table, data.label_table):
        assert build(SMALL).equals(build(SMALL))
    for view in data.VIEWS:
        assert data.view_table(SMALL, view).equals(data.view_table(SMALL, view))
    other = data.DataSpec(**{**SMALL.__dict__, "seed": SMALL.seed + 1})
    assert not data.label_table(other).equals(data.label_table(SMALL))


def test_views_shape_and_invariants() -> None:
    assert len(data.VIEWS) == 5
    assert len(data.feature_refs()) == 20
    assert len({ref.split(":")[1] for ref in data.feature_refs()}) == 20
    loan_ids = set(data.entity_table(SMALL)[data.ENTITY_KEY].to_pylist())
    assert len(loan_ids) == SMALL.entities
    assert min(loan_ids) == "L0000001"
    for view, features in data.VIEWS.items():
        table = data.view_table(SMALL, view)
        assert table.column_names == [
            data.ENTITY_KEY,
            data.EVENT_TIME,
            data.CREATED_TIME,
            *(name for name, _ in features),
        ]
        for name, dtype in features:
            assert table.schema.field(name).type == pa.from_numpy_dtype(np.dtype(dtype))
        assert table.schema.field(data.EVENT_TIME).type == pa.timestamp("us", tz="UTC")
        assert set(table[data.ENTITY_KEY].to_pylist()) <= loan_ids
        assert pc.all(pc.greater_equal(table[data.CREATED_TIME], table[data.EVENT_TIME])).as_py()
        assert pc.min(table[data.EVENT_TIME]).as_py() >= SMALL.start_datetime
        assert pc.max(table[data.EVENT_TIME]).as_py() < SMALL.end_datetime
        # Arrival order.
        created = table[data.CREATED_TIME].to_pylist()
        assert created == sorted(created)
        keys = list(
            zip(
                table[data.ENTITY_KEY].to_pylist(),
                table[data.EVENT_TIME].to_pylist(),
                created,
                strict=True,
            )
        )
        assert len(set(keys)) == len(keys)
        # Late corrections: repeated (loan, event_time), the second written >= 7 days later.
        by_event: dict[tuple, list] = {}
        for loan, event, made in keys:
            by_event.setdefault((loan, event), []).append(made)
        repeated = [sorted(v) for v in by_event.values() if len(v) > 1]
        assert len(repeated) == round(SMALL.correction_fraction * len(by_event))
        assert all((v[1] - v[0]).days >= 6 for v in repeated)


def test_labels_spread_over_the_range() -> None:
    labels = data.label_table(SMALL)
    assert labels.num_rows == SMALL.labels
    assert labels.column_names == [data.ENTITY_KEY, data.EVENT_TIME, data.LABEL]
    assert set(labels[data.LABEL].to_pylist()) == {0, 1}
    times = labels[data.EVENT_TIME].to_pylist()
    assert min(times) >= SMALL.start_datetime
    assert max(times) < SMALL.end_datetime
    assert (max(times) - min(times)).days > SMALL.days * 0.9


def test_write_dataset_reuses_matching_directory(tmp_path: Path) -> None:
    manifest = data.write_dataset(SMALL, tmp_path)
    assert manifest["rows"]["labels"] == SMALL.labels
    assert set(manifest["files"]) == {"entities", "labels", *data.VIEWS}
    stamp = (tmp_path / "labels.parquet").stat().st_mtime_ns
    assert data.write_dataset(SMALL, tmp_path) == manifest
    assert (tmp_path / "labels.parquet").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    assert data.read_table(tmp_path, "payments").equals(data.view_table(SMALL, "payments"))
    bigger = data.DataSpec(**{**SMALL.__dict__, "labels": 10})
    assert data.write_dataset(bigger, tmp_path)["rows"]["labels"] == 10


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        data.DataSpec(entities=0)
    with pytest.raises(ValueError):
        data.DataSpec(correction_fraction=2)
