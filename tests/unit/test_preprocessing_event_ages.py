"""A sequence's event times reach the model as ages at each row's reference time (ADR 0026):
fitted and encoded by the one libs/preprocessing implementation, offline (label time) and
online (the time the features were read) alike."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from libs.preprocessing import (
    PreprocessingSpec,
    SequenceColumns,
    epoch_seconds,
    fit,
    seconds_from_micros,
    transform,
)
from services.inference.app.model import LoadedModel, RawRows, VersionFiles
from services.inference.domain.fixed_rows import reference_times, representative_columns

AMOUNT, TIME = "pay:recent__amount", "pay:recent__event_time"
PAYMENTS = SequenceColumns("payments", (AMOUNT, TIME), max_length=3, event_time=TIME)
T = 1_780_000_000.123456  # a reference time (epoch seconds, whole microseconds)


def _columns() -> dict[str, object]:
    """Three rows: 2 events (10 and 1 days before T), none, 4 events (newest 3 kept)."""
    day = 86400.0
    return {
        AMOUNT: [[5.0, 7.0], None, [1.0, 2.0, 3.0, 4.0]],
        TIME: [[T - 10 * day, T - day], None, [T - 9 * day, T - 8 * day, T - 2 * day, T - 60]],
    }


def test_event_times_are_fitted_and_encoded_as_ages() -> None:
    references = np.full(3, T)
    spec = fit(
        _columns(), [], normalization="standard", sequences=[PAYMENTS], reference_times=references
    )
    (seq,) = spec.sequences
    assert seq.event_time == TIME and spec.version == 3
    ages = np.array([10, 1, 8, 2, 0], dtype=np.float64) * 86400.0
    ages[-1] = 60.0  # kept events: 2 of row 0, the newest 3 of row 2
    age = seq.numeric[1]
    assert age.mean == pytest.approx(ages.mean()) and age.std == pytest.approx(ages.std())
    (encoded,) = transform(spec, _columns(), reference_times=references).sequences
    np.testing.assert_allclose(encoded.values[2, :, 1], (ages[2:] - age.mean) / age.std, rtol=1e-6)
    # Ten days later every event is ten days older: the model sees a different history.
    (later,) = transform(spec, _columns(), reference_times=references + 864000).sequences
    assert not np.allclose(later.values[:, :, 1][later.mask], encoded.values[:, :, 1][encoded.mask])
    assert (later.values[:, :, 0] == encoded.values[:, :, 0]).all()  # amounts unchanged


def test_without_reference_times_it_refuses_saying_what_is_needed() -> None:
    spec = fit(_columns(), [], sequences=[PAYMENTS], reference_times=np.full(3, T))
    with pytest.raises(ValueError, match="reference_times"):
        transform(spec, _columns())
    with pytest.raises(ValueError, match="reference_times"):
        fit(_columns(), [], sequences=[PAYMENTS])


def test_label_times_offline_and_read_times_online_give_the_same_bits() -> None:
    micros = 1_780_000_000_123_456
    label = datetime.fromtimestamp(micros / 1e6, UTC).replace(microsecond=123_456)
    offline = epoch_seconds(pa.array([label], pa.timestamp("us", tz="UTC")))
    chunked = epoch_seconds(pa.chunked_array([pa.array([label], pa.timestamp("ms", tz="UTC"))]))
    online = seconds_from_micros(micros)
    assert offline[0] == online and np.float64(online).tobytes() == offline[0].tobytes()
    assert chunked[0] == seconds_from_micros(1_780_000_000_123_000)
    assert epoch_seconds(np.array([label.replace(tzinfo=None)], "datetime64[us]"))[0] == online


def test_arrow_training_rows_and_python_serving_rows_encode_alike() -> None:
    references = np.array([T, T + 5, T + 10])
    spec = fit(_columns(), [], sequences=[PAYMENTS], reference_times=references)
    python = transform(spec, _columns(), reference_times=references)
    arrow = transform(
        spec,
        {name: pa.array(values) for name, values in _columns().items()},
        reference_times=pa.array(
            [datetime.fromtimestamp(r, UTC) for r in references], pa.timestamp("us", tz="UTC")
        ),
    )
    for a, b in zip(python.arrays().values(), arrow.arrays().values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


def test_version_3_round_trips_and_older_specs_keep_their_bytes() -> None:
    spec = fit(_columns(), [], sequences=[PAYMENTS], reference_times=np.full(3, T))
    again = PreprocessingSpec.from_json(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    plain = fit(_columns(), [], sequences=[SequenceColumns("payments", (AMOUNT,), 3)])
    assert plain.version == 2 and b"event_time" not in plain.to_json()


def test_served_rows_take_the_read_time_as_reference_and_fixed_rows_have_one() -> None:
    spec = fit(_columns(), [], sequences=[PAYMENTS], reference_times=np.full(3, T))
    files = VersionFiles("m", 1, b"", "", spec, "", "", {})
    model = object.__new__(LoadedModel)
    model.files = files
    references = model._references(1_780_000_000_123_456, 2)
    assert references is not None and references.tolist() == [1_780_000_000.123456] * 2
    columns = representative_columns(spec, 16)
    times = reference_times(spec, 16)
    assert times is not None
    rows = model.rows_from_columns(columns, times)
    assert (
        isinstance(rows, RawRows)
        and rows.slice(2, 5).reference_times.tolist()
        == [  # type: ignore[union-attr]
            times[0]
        ]
        * 3
    )
    ages = [times[0] - t for v in columns[TIME] if v for t in v if t is not None]
    low, high = (
        spec.sequences[0].numeric[1].quantiles[0],
        spec.sequences[0].numeric[1].quantiles[-1],
    )
    assert ages and all(low - 1e-6 <= a <= high + 1e-6 for a in ages)  # walked over the ages
