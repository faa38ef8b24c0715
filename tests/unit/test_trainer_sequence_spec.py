"""A sequence model's spec: sequences named, checked and defaulted on submit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf import json_format

from lathe.trainer.v1 import message_pb2
from libs.errors import FailedPrecondition, InvalidArgument
from libs.preprocessing import SequenceColumns
from libs.sdk.trainer import load_spec
from services.trainer.api.validate import job_spec
from services.trainer.app.data import sequence_columns

PAYMENTS = {"name": "payments", "features": ["pay:amount", "pay:days_late"], "maxLength": 20}


def parse(model: dict[str, Any]) -> message_pb2.TrainingJobSpec:
    body = {
        "modelName": "credit",
        "featureService": "underwriting",
        "labelSource": {"query": "SELECT loan_id, t AS label_time, y AS label FROM labels"},
        "split": {"validationStart": "2026-01-01T00:00:00Z"},
        "model": model,
        "optimization": {"epochs": 3},
    }
    return json_format.ParseDict(body, message_pb2.TrainingJobSpec())


def test_a_sequence_spec_is_resolved_with_defaults_and_digested() -> None:
    valid = job_spec(parse({"family": "sequence_transformer", "sequences": [PAYMENTS]}))
    assert valid.sequences == (
        SequenceColumns("payments", ("pay:amount", "pay:days_late"), 20, "left"),
    )
    assert valid.proto.model.sequences[0].padding == "left"  # written out, so digested
    assert valid.hyperparameters["d_token"] == 32 and valid.hyperparameters["n_heads"] == 4
    right = {**PAYMENTS, "padding": "right"}
    other = job_spec(parse({"family": "sequence_transformer", "sequences": [right]}))
    assert other.digest != valid.digest and other.sequences[0].padding == "right"


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"family": "sequence_transformer"}, r"reads event sequences; name at least one"),
        ({"family": "mlp", "sequences": [PAYMENTS]}, r"'mlp' does not read sequences"),
        (
            {"family": "sequence_transformer", "sequences": [{**PAYMENTS, "maxLength": 0}]},
            r"sequences\[0\]\.max_length must be in \[1, 1024\]",
        ),
        (
            {"family": "sequence_transformer", "sequences": [{**PAYMENTS, "maxLength": 5000}]},
            r"max_length",
        ),
        (
            {"family": "sequence_transformer", "sequences": [{**PAYMENTS, "features": []}]},
            r"features must name",
        ),
        (
            {"family": "sequence_transformer", "sequences": [{**PAYMENTS, "name": "Pay Ments"}]},
            r"name must be lower case",
        ),
        (
            {"family": "sequence_transformer", "sequences": [{**PAYMENTS, "padding": "middle"}]},
            r"padding must be one of \['left', 'right'\]",
        ),
        (
            {
                "family": "sequence_transformer",
                "sequences": [PAYMENTS, {**PAYMENTS, "name": "again"}],
            },
            r"'pay:amount' is already in sequence 'payments'",
        ),
        (
            {"family": "sequence_transformer", "sequences": [PAYMENTS, PAYMENTS]},
            r"used twice",
        ),
        (
            {
                "family": "sequence_transformer",
                "sequences": [PAYMENTS],
                "hyperparameters": {"d_token": 30, "n_heads": 4},
            },
            r"multiple of n_heads",
        ),
        (
            {
                "family": "sequence_transformer",
                "sequences": [PAYMENTS],
                "hyperparameters": {"n_blocks": 0},
            },
            r"n_blocks.*>= 1",
        ),
    ],
)
def test_bad_sequence_specs_are_refused(model: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        job_spec(parse(model))


def test_the_documented_yaml_loads(tmp_path: Path) -> None:
    spec_file = tmp_path / "seq.yaml"
    spec_file.write_text(
        """\
model_name: credit-default
feature_service: underwriting_full
label_source: {query: "SELECT loan_id, t AS label_time, y AS label FROM labels"}
split: {validation_start: 2018-03-01T00:00:00Z}
model:
  family: sequence_transformer
  hyperparameters: {d_token: 32, n_blocks: 2, n_heads: 4}
  sequences:
    - name: payments
      features: [payments:amount, payments:days_late, payments:kind]
      max_length: 20
      padding: left
optimization: {epochs: 5}
"""
    )
    valid = job_spec(load_spec(spec_file))
    assert valid.sequences == (
        SequenceColumns(
            "payments", ("payments:amount", "payments:days_late", "payments:kind"), 20, "left"
        ),
    )


def _schema(*lists: str, times: str = "list<double>") -> pa.Schema:
    types = {"list<double>": pa.list_(pa.float64()), "double": pa.float64()}
    return pa.schema(
        [("app:rate", pa.float64())]
        + [
            (n, types[times] if n.endswith("__event_time") else pa.list_(pa.float64()))
            for n in lists
        ]
    )


def test_the_event_times_of_the_named_columns_join_their_sequence() -> None:
    model = parse(
        {
            "family": "sequence_transformer",
            "sequences": [{**PAYMENTS, "features": ["pay:recent__amount", "pay:recent__late"]}],
        }
    ).model
    lists = ("pay:recent__amount", "pay:recent__late", "pay:recent__event_time")
    (sequence,) = sequence_columns(model, _schema(*lists))
    assert sequence.features == lists and sequence.event_time == "pay:recent__event_time"
    # Named explicitly, it is the sequence's time too (read as ages, never epoch seconds).
    model.sequences[0].features.append("pay:recent__event_time")
    (named,) = sequence_columns(model, _schema(*lists))
    assert named.features == lists and named.event_time == "pay:recent__event_time"
    # A LAST_N over one column has no event times: nothing is added.
    model.sequences[0].features[:] = ["pay:amounts"]
    (single,) = sequence_columns(model, _schema("pay:amounts"))
    assert single.features == ("pay:amounts",) and single.event_time == ""
    # Another aggregation's event times are not this sequence's: left unnamed, refused.
    with pytest.raises(FailedPrecondition, match="pay:other__event_time"):
        sequence_columns(model, _schema("pay:amounts", "pay:other__event_time"))
