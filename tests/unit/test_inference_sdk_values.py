"""What the SDK and `lathe predict` send as entity keys and request features: typed Values,
never a ``str()`` of an object; numbers typed as the feature store will take them."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import pytest

from lathe.feature_store.v1 import message_pb2 as fs
from libs.cli import inference as cli
from libs.cli.main import app
from libs.sdk.feature_store import to_value
from libs.sdk.inference import PredictRow, _row
from services.feature_store.domain.values import coerce


def _kind(value: fs.Value) -> tuple[str | None, object]:
    kind = value.WhichOneof("kind")
    return kind, getattr(value, kind) if kind else None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (np.int64(5), ("int64_value", 5)),
        (np.int32(-3), ("int64_value", -3)),
        (np.uint8(7), ("int64_value", 7)),
        (np.float32(0.5), ("float64_value", 0.5)),
        (np.bool_(True), ("bool_value", True)),
        (np.bool_(False), ("bool_value", False)),
    ],
)
def test_numpy_scalars_are_typed_values(given: object, expected: tuple[str | None, object]) -> None:
    assert _kind(to_value(given)) == expected  # type: ignore[arg-type]


def test_builtins_as_before_and_lists_of_numpy_scalars() -> None:
    # A bool is an int to Python but a bool here.
    assert _kind(to_value(True)) == ("bool_value", True)
    assert _kind(to_value(5)) == ("int64_value", 5)
    assert _kind(to_value(0.5)) == ("float64_value", 0.5)
    assert _kind(to_value("LC1")) == ("string_value", "LC1")
    assert _kind(to_value(np.str_("LC1"))) == ("string_value", "LC1")  # a str
    assert _kind(to_value(np.float64(2.25))) == ("float64_value", 2.25)  # a float
    assert _kind(to_value(None)) == (None, None)
    stamp = to_value(datetime(2024, 1, 2, 3, 4, 5)).timestamp_value  # naive: UTC
    assert stamp.ToDatetime(tzinfo=UTC) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert list(to_value([1, 2]).int64_list_value.values) == [1, 2]
    assert list(to_value([np.int64(1), 2]).int64_list_value.values) == [1, 2]
    assert list(to_value([np.float32(0.5), 1]).float64_list_value.values) == [0.5, 1.0]


@pytest.mark.parametrize(
    "given",
    [
        np.array([1.0, 2.0]),
        Decimal("1.5"),
        date(2024, 1, 2),
        np.datetime64("2024-01-02"),
        b"LC1",
        object(),
        np.complex128(1j),
    ],
)
def test_anything_else_is_refused_not_sent_as_its_str(given: object) -> None:
    with pytest.raises(TypeError, match=f"a .*{type(given).__qualname__} is not a feature value"):
        to_value(given)  # type: ignore[arg-type]


def test_an_integer_beyond_int64_is_refused() -> None:
    assert to_value(2**63 - 1).int64_value == 2**63 - 1
    with pytest.raises(ValueError, match="does not fit an int64"):
        to_value(2**63)


def test_a_row_types_its_keys_and_leaves_out_features_that_are_none() -> None:
    message = _row(
        PredictRow(
            {"card_id": np.int64(4111), "merchant_id": "m-9"},
            {"amount": np.float32(0.5), "term": np.int64(36), "note": None, "flag": np.bool_(1)},
        )
    )
    assert _kind(message.entity_keys["card_id"]) == ("int64_value", 4111)
    assert _kind(message.entity_keys["merchant_id"]) == ("string_value", "m-9")
    assert _kind(message.request_features["amount"]) == ("float64_value", 0.5)
    assert _kind(message.request_features["term"]) == ("int64_value", 36)
    assert _kind(message.request_features["flag"]) == ("bool_value", True)
    assert "note" not in message.request_features


def test_a_row_names_the_key_or_feature_it_cannot_send() -> None:
    with pytest.raises(TypeError, match=r"request feature 'amount': a decimal\.Decimal"):
        _row(PredictRow({"loan_id": "LC1"}, {"amount": Decimal("1.5")}))
    with pytest.raises(TypeError, match="entity key 'loan_id' is None"):
        _row(PredictRow({"loan_id": None}))  # type: ignore[dict-item]


def test_predict_feature_values() -> None:
    cases: dict[str, object] = {
        "36": 36,  # an int64 feature takes it; so does a float64 one
        "-7": -7,
        "0": 0,
        "12000.5": 12000.5,
        "1e3": 1000.0,
        "true": True,
        "FALSE": False,
        "02139": "02139",  # digits with a leading zero name something: a string
        '"12345"': "12345",  # quoted: a string
        "'true'": "true",
        '""': "",
        "LC1": "LC1",
    }
    parsed = {text: cli._feature_value(text) for text in cases}
    assert parsed == cases
    assert all(type(parsed[text]) is type(value) for text, value in cases.items()), parsed


def test_predict_entity_keys() -> None:
    cases: dict[str, object] = {
        "4111": 4111,
        "-1": -1,
        "00042": "00042",
        '"4111"': "4111",
        "LC1": "LC1",
        "1.5": "1.5",
    }
    parsed = {text: cli._key_value(text) for text in cases}
    assert parsed == cases
    assert all(type(parsed[text]) is type(value) for text, value in cases.items()), parsed


def test_the_feature_store_takes_what_predict_sends() -> None:
    """The store takes an int where a float64 is declared, never a float for an int64."""
    for text, declared in [
        ("term=36", fs.VALUE_TYPE_INT64),
        ("amount=12000", fs.VALUE_TYPE_FLOAT64),
        ("amount=12000.5", fs.VALUE_TYPE_FLOAT64),
        ("zip=02139", fs.VALUE_TYPE_STRING),
        ('zip="12345"', fs.VALUE_TYPE_STRING),
    ]:
        name, value = cli._pair(text, cli._feature_value)
        coerce(to_value(value), declared, name)  # raises InvalidArgument when refused


def _lathe(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[object, str]:
    """``lathe <args>`` in this process (inference: a closed port): (exit code, output);
    fails rather than hangs if it does not return within 20 s."""
    exits: list[object] = []

    def run() -> None:
        try:
            app(list(args), prog_name="lathe")
        except SystemExit as done:
            exits.append(done.code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    assert exits, f"lathe {' '.join(args)} did not exit within 20 s"
    captured = capsys.readouterr()
    return exits[0], captured.out + captured.err


@pytest.fixture(autouse=True)
def _closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATHE_INFERENCE_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("COLUMNS", "200")


def test_an_entity_key_beyond_int64_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = _lathe(capsys, "predict", "m", "-e", "id=99999999999999999999")
    assert code == 2 and "does not fit an int64" in output, output


@pytest.mark.parametrize("timeout", ["nan", "-1", "inf", "0"])
def test_a_timeout_that_is_no_number_of_seconds_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    code, output = _lathe(
        capsys, "deployments", "wait", "m", "--version", "1", "--timeout", timeout
    )
    assert code == 2 and "--timeout" in output, output
    code, output = _lathe(capsys, "predict", "m", "-e", "id=1", "--timeout", timeout)
    assert code == 2 and "--timeout" in output, output
