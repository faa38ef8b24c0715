"""libs/preprocessing sequences: newest N kept, padded with a mask, fitted on kept events."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from libs.preprocessing import (
    PreprocessingSpec,
    Preprocessor,
    SequenceColumns,
    fit,
    sequence_inputs,
    transform,
)

AMOUNT, LATE, KIND = "pay:amount", "pay:days_late", "pay:kind"
PAYMENTS = SequenceColumns("payments", (AMOUNT, LATE, KIND), max_length=3)


def _columns() -> dict[str, object]:
    """Four entities: 2 events, none (null), none (empty), 5 events (oldest first)."""
    return {
        "app:income": [10.0, 20.0, None, 40.0],
        AMOUNT: [[1.0, 2.0], None, [], [3.0, 4.0, 5.0, 6.0, 7.0]],
        LATE: [[0, 3], None, [], [1, None, 0, 2, 9]],
        KIND: [["card", "bank"], None, [], ["card", "card", "bank", "cash", "card"]],
    }


def test_fit_keeps_the_newest_events_and_pads_left_with_a_mask() -> None:
    spec = fit(_columns(), ["app:income"], normalization="standard", sequences=[PAYMENTS])
    (seq,) = spec.sequences
    assert [f.name for f in seq.numeric] == [AMOUNT, LATE]
    assert [f.name for f in seq.categorical] == [KIND]
    # Fitted over the kept events only: 1, 2 and 5, 6, 7 (3 and 4 are older than N=3).
    assert seq.numeric[0].mean == pytest.approx(np.mean([1, 2, 5, 6, 7]))
    assert seq.categorical[0].vocabulary == ("bank", "card", "cash")  # ties by name
    encoded = transform(spec, _columns())
    (s,) = encoded.sequences
    assert s.mask.tolist() == [
        [False, True, True],
        [False, False, False],
        [False, False, False],
        [True, True, True],
    ]
    amount = seq.numeric[0]
    raw = np.array([5.0, 6.0, 7.0])
    np.testing.assert_allclose(s.values[3, :, 0], (raw - amount.mean) / amount.std, rtol=1e-6)
    assert s.values[1].tolist() == [[0.0, 0.0]] * 3 and s.codes[2].tolist() == [[0]] * 3
    assert s.codes[3, :, 0].tolist() == [1, 3, 2]  # bank, cash, card
    assert s.codes[0, 1:, 0].tolist() == [2, 1]  # card, bank in the last two slots
    assert s.values.dtype == np.float32 and s.codes.dtype == np.int64 and s.mask.dtype == bool
    assert np.isfinite(s.values).all()
    arrays = encoded.arrays()
    assert set(arrays) == {"numeric", "categorical", *sequence_inputs("payments")}


def test_right_padding_starts_at_slot_zero() -> None:
    spec = fit(
        _columns(), [], sequences=[SequenceColumns("payments", (AMOUNT,), 3, padding="right")]
    )
    (s,) = transform(spec, _columns()).sequences
    assert s.mask.tolist()[0] == [True, True, False]
    assert s.mask.tolist()[3] == [True, True, True]
    assert spec.fitted_rows == 4 and spec.feature_names == (AMOUNT,)


def test_missing_elements_are_filled_and_unseen_categories_coded_zero() -> None:
    spec = fit(_columns(), [], sequences=[PAYMENTS])
    late = spec.sequences[0].numeric[1]
    rows = {AMOUNT: [[1.0, 2.0]], LATE: [[None, 3]], KIND: [["crypto", None]]}
    (s,) = transform(spec, rows).sequences
    fill_only = transform(spec, {AMOUNT: [[1.0]], LATE: [[late.fill]], KIND: [["card"]]})
    assert s.values[0, 1, 1] == fill_only.sequences[0].values[0, 2, 1]
    assert s.codes[0, 1:, 0].tolist() == [0, 0]


@pytest.mark.parametrize("form", ["python", "numpy", "arrow", "chunked"])
def test_python_numpy_and_arrow_inputs_encode_to_the_same_bits(form: str) -> None:
    spec = fit(_columns(), ["app:income"], sequences=[PAYMENTS])
    reference = transform(spec, _columns()).arrays()
    columns = _columns()
    if form == "numpy":
        columns = {
            k: np.array([None if v is None else np.array(v) for v in vs] + [None], dtype=object)[
                :-1
            ]
            if k != "app:income"
            else vs
            for k, vs in columns.items()
        }
    elif form in ("arrow", "chunked"):
        types = {AMOUNT: pa.list_(pa.float64()), LATE: pa.list_(pa.int64())}
        columns = {
            k: pa.array(vs, type=types.get(k)) if k != "app:income" else vs
            for k, vs in columns.items()
        }
        if form == "chunked":
            columns = {
                k: pa.chunked_array([v.slice(0, 1), v.slice(1)]) if isinstance(v, pa.Array) else v
                for k, v in columns.items()
            }
    again = Preprocessor(spec).apply(columns).arrays()
    for name, array in reference.items():
        np.testing.assert_array_equal(again[name], array, err_msg=name)


def test_fields_of_one_sequence_must_describe_the_same_events() -> None:
    spec = fit(_columns(), [], sequences=[PAYMENTS])
    bad = {**_columns(), LATE: [[0], None, [], [1, 2, 3, 4, 5]]}
    with pytest.raises(ValueError, match=r"row 0 has 2 events in 'pay:amount' but 1 in"):
        transform(spec, bad)
    with pytest.raises(TypeError, match="must be a list per row"):
        transform(spec, {**_columns(), AMOUNT: [1.0, 2.0, 3.0, 4.0]})


def test_the_json_round_trips_as_version_2_and_version_1_specs_still_load() -> None:
    spec = fit(_columns(), ["app:income"], sequences=[PAYMENTS], extra={"job_id": "j"})
    data = spec.to_json()
    document = json.loads(data)
    assert document["version"] == 2
    assert document["inputs"]["sequences"] == {"payments": [AMOUNT, LATE, KIND]}
    again = PreprocessingSpec.from_json(data)
    assert again == spec and again.to_json() == data
    for name, array in transform(spec, _columns()).arrays().items():
        np.testing.assert_array_equal(transform(again, _columns()).arrays()[name], array)
    # Without sequences the spec is written as before (version 1, no new keys): old
    # readers read it and existing digests do not move.
    plain = fit({"a": [1.0, 2.0, 3.0]}, ["a"])
    assert json.loads(plain.to_json())["version"] == 1
    assert "sequences" not in json.loads(plain.to_json())


def test_a_version_1_document_written_by_the_old_code_loads() -> None:
    old = {
        "format": "lathe.preprocessing",
        "version": 1,
        "inputs": {"numeric": ["a"], "categorical": ["c"]},
        "numeric": [
            {
                "name": "a",
                "fill": 2.0,
                "normalization": "standard",
                "mean": 2.0,
                "std": 1.0,
                "quantiles": [],
            }
        ],
        "categorical": [{"name": "c", "vocabulary": ["x"]}],
        "fitted_rows": 3,
        "extra": {},
    }
    spec = PreprocessingSpec.from_json(json.dumps(old))
    assert spec.sequences == () and spec.feature_names == ("a", "c")
    assert transform(spec, {"a": [3.0], "c": ["x"]}).numeric.tolist() == [[1.0]]
    assert json.loads(spec.to_json()) == old


def test_encoding_is_deterministic_and_does_not_depend_on_batch_composition() -> None:
    spec = fit(_columns(), ["app:income"], sequences=[PAYMENTS])
    whole = transform(spec, _columns()).arrays()
    for i in range(4):
        one = transform(spec, {k: v[i : i + 1] for k, v in _columns().items()}).arrays()
        for name, array in whole.items():
            np.testing.assert_array_equal(one[name][0], array[i], err_msg=name)


def test_boolean_and_integer_fields_read_the_same_from_lists_and_arrow() -> None:
    flags = [[True, False, None], None, [False]]
    counts = [[1, 2**40, None], [], [7]]
    columns = {"e:flag": flags, "e:count": counts}
    spec = fit(columns, [], sequences=[SequenceColumns("e", ("e:flag", "e:count"), 2)])
    arrow = {
        "e:flag": pa.array(flags, type=pa.list_(pa.bool_())),
        "e:count": pa.array(counts, type=pa.list_(pa.int64())),
    }
    (python,) = transform(spec, columns).sequences
    (typed,) = transform(spec, arrow).sequences
    np.testing.assert_array_equal(python.values, typed.values)
    np.testing.assert_array_equal(python.mask, typed.mask)
    assert python.mask.tolist() == [[True, True], [False, False], [False, True]]
